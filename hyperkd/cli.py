"""The ``hyperkd`` command. Each subcommand lives in ``hyperkd.commands.<name>`` and exposes
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; importing them lazily keeps
``hyperkd --help`` fast."""
import argparse
import importlib
import sys

from hyperkd.config import add_config_argument, apply_config

COMMANDS = ("demo", "train", "sweep", "plan", "teacher", "eval", "models", "bench", "siren")
# Commands whose flags may also come from a YAML --config file.
CONFIGURABLE = ("train", "sweep", "teacher", "siren")


def build_parser():
    """The parser and its subcommand parsers by name."""
    parser = argparse.ArgumentParser(prog="hyperkd", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name in COMMANDS:
        module = importlib.import_module(f"hyperkd.commands.{name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        if name in CONFIGURABLE:
            add_config_argument(cmd)
        cmd.set_defaults(_run=module.run)
        commands[name] = cmd
    return parser, commands


def parse_args(argv=None) -> argparse.Namespace:
    """Parses ``argv``; a ``--config`` file supplies defaults, and the flags are parsed again."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser()
    command = next((a for a in argv if a in commands), None)
    config = None
    if command in CONFIGURABLE and "--config" in argv[:-1]:
        config = argv[argv.index("--config") + 1]
    if config is not None:
        try:
            apply_config(commands[command], config)
        except (ValueError, FileNotFoundError, argparse.ArgumentTypeError) as err:
            parser.exit(2, f"hyperkd {command}: error: {err}\n")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"hyperkd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
