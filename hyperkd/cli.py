"""The ``hyperkd`` command. Each subcommand lives in ``hyperkd.commands.<name>`` and exposes
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen subcommand's flags
are built, so ``hyperkd --help`` imports none of the training code.

Everything a user can get wrong ends as one line, ``hyperkd CMD: error: ...``, and exit status 2;
Ctrl-C ends with exit status 130 and says how to continue."""
import argparse
import copy
import importlib
import sys

from hyperkd.config import add_config_argument, apply_config, config_path

DESCRIPTION = "hypernetworks trained with fused layer-wise knowledge distillation"
COMMANDS = ("demo", "train", "sweep", "plan", "teacher", "eval", "models", "bench", "siren", "gtn-eval",
            "makd-search")
# Commands whose flags may also come from a YAML --config file.
CONFIGURABLE = ("train", "sweep", "teacher", "siren")
# What to do after Ctrl-C, per command that can continue where it stopped.
CONTINUE = {"train": "continue with --resume", "teacher": "continue with --resume",
            "siren": "continue with --resume",
            "sweep": "run the same command again to continue (finished runs are skipped)",
            "demo": "run the same command again to continue (finished stages are skipped)",
            "gtn-eval": "run the same command again to continue (finished runs are skipped)",
            "makd-search": "run the same command again to continue (finished variants are skipped)"}
# What a user's input can make go wrong: bad values, files, folders, a diverging loss.
USER_ERRORS = (ValueError, OSError, FloatingPointError, argparse.ArgumentTypeError)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every optional flag's help ends with its default (unless the help already names it)."""

    def _get_help_string(self, action):
        text = (action.help or "").strip()
        shown = action.option_strings and not action.required and action.default is not argparse.SUPPRESS
        if not shown or action.nargs == 0 or "default" in text.lower():
            return text
        default = action.default
        if isinstance(default, (tuple, list)):
            default = ",".join(map(str, default))
        default = "none" if default is None else str(default).replace("%", "%%")
        return f"{text} (default: {default})".strip()

    def _format_action(self, action):
        if action.help is None and action.option_strings:  # argparse shows nothing for these
            action = copy.copy(action)
            action.help = self._get_help_string(action) or None
        return super()._format_action(action)


def build_parser(command=None):
    """The parser and its subcommand parsers by name; only ``command``'s flags are added."""
    parser = argparse.ArgumentParser(prog="hyperkd", description=DESCRIPTION,
                                     formatter_class=DefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name in COMMANDS:
        module = importlib.import_module(f"hyperkd.commands.{name.replace('-', '_')}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP,
                             formatter_class=DefaultsHelpFormatter)
        if name == command:
            module.add_arguments(cmd)
            if name in CONFIGURABLE:
                add_config_argument(cmd)
            cmd.set_defaults(_run=module.run)
        commands[name] = cmd
    return parser, commands


def parse_args(argv=None) -> argparse.Namespace:
    """Parses ``argv``; a ``--config`` file supplies defaults, and the flags are parsed again."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser, commands = build_parser(command)
    if command is None:
        return parser.parse_args(argv)
    rest = argv[argv.index(command) + 1:]
    module = importlib.import_module(f"hyperkd.commands.{command.replace('-', '_')}")
    if getattr(module, "lists_only", None) is not None and module.lists_only(rest):
        for action in commands[command]._actions:  # e.g. `train --kd list` needs no --model or --out
            action.required = False
    config = config_path(rest) if command in CONFIGURABLE else None
    if config is not None:
        try:
            apply_config(commands[command], config)
        except (ValueError, FileNotFoundError, argparse.ArgumentTypeError) as err:
            parser.exit(2, f"hyperkd {command}: error: {err}\n")
    return parser.parse_args(argv)


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        then = CONTINUE.get(args.command)
        print(f"hyperkd {args.command}: interrupted" + (f"; {then}" if then else ""), file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        print(f"hyperkd {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
