"""The ``hyperkd`` command. Each subcommand lives in ``hyperkd.commands.<name>`` and exposes
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; importing them lazily keeps
``hyperkd --help`` fast."""
import argparse
import importlib
import sys

COMMANDS = ("demo", "bench", "models", "eval", "teacher")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperkd", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"hyperkd.commands.{name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"hyperkd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
