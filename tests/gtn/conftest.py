"""The train tests' tiny digits fixture, for the end-to-end teacher and KD-stage runs."""
from tests.train.conftest import tiny_digits  # noqa: F401
