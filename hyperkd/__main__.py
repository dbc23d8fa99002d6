import sys

from hyperkd.cli import main

sys.exit(main())
