"""YAML configuration for the training commands: a ``--config FILE`` holds the same keys as the
flags (``batch-size`` or ``batch_size``); flags given on the command line win. The effective
configuration is written beside the results as ``config.yaml``."""
import argparse
import os
from pathlib import Path
from typing import Optional

import yaml


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file with the same keys as these flags (flags win)")


def config_path(argv) -> Optional[str]:
    """The ``--config`` value in ``argv`` (``--config FILE``, ``--config=FILE`` or an abbreviation
    such as ``--conf FILE``, as argparse accepts them), or None."""
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config", default=None)
    try:
        known, _ = finder.parse_known_args(argv)
    except SystemExit:  # "--config" without its value: the full parse reports it
        return None
    return known.config


def apply_config(parser: argparse.ArgumentParser, path: Path) -> None:
    """Turns the file's keys into ``parser``'s defaults (so required flags may come from it).
    Every value goes through its flag's own parsing (type, choices; a list becomes the flag's
    comma-separated form), and a failure names the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no file at {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(values, dict):
        raise ValueError(f"config {path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            valid = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise ValueError(f"config {path}: unknown key {key!r}; valid keys: {valid}")
        action = actions[dest]
        try:
            action.default = _flag_value(action, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"config {path}: key {key!r}: {err}") from None
        action.required = False


def _flag_value(action: argparse.Action, value):
    """``value`` parsed as the command line would parse ``action``'s flag."""
    if action.nargs == 0:  # a switch such as --no-kd: true or false, nothing else
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return action.const if value else action.default
    if value is None:
        return None
    if isinstance(value, dict):
        raise ValueError(f"expected a value, got a mapping {value!r}")
    if isinstance(value, bool):
        raise ValueError(f"expected a value for {action.option_strings[0]}, got {value!r}")
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):  # a flag that takes a list
        return [_parsed(action, v) for v in (value if isinstance(value, list) else [value])]
    return _parsed(action, ",".join(map(str, value)) if isinstance(value, list) else value)


def _parsed(action: argparse.Action, value):
    text = str(value)
    try:
        parsed = action.type(text) if action.type else text
    except (TypeError, ValueError):  # as argparse words it; an ArgumentTypeError keeps its message
        raise ValueError(f"invalid {getattr(action.type, '__name__', 'value')} value: {text!r}") from None
    if action.choices is not None and parsed not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}, got {parsed!r}")
    return parsed


def save_config(args: argparse.Namespace, out_dir: Path) -> Path:
    """Writes the effective configuration (every flag's final value) to ``out_dir/config.yaml``,
    atomically (a temporary file renamed over it). Commands call it once every check has passed,
    when the run starts."""
    out_dir = Path(out_dir)
    plain = {k.replace("_", "-"): (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
             for k, v in sorted(vars(args).items()) if not k.startswith("_") and k not in ("command", "config")}
    path = out_dir / "config.yaml"
    tmp = out_dir / ".config.yaml.tmp"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(yaml.safe_dump(plain, sort_keys=True))
        os.replace(tmp, path)
    except OSError as err:
        raise ValueError(f"--out: cannot write {path} ({err.strerror or err})") from None
    return path
