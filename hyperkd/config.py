"""YAML configuration for the training commands: a ``--config FILE`` holds the same keys as the
flags (``batch-size`` or ``batch_size``); flags given on the command line win. The effective
configuration is written beside the results as ``config.yaml``."""
import argparse
from pathlib import Path

import yaml


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file with the same keys as these flags (flags win)")


def apply_config(parser: argparse.ArgumentParser, path: Path) -> None:
    """Turns the file's keys into ``parser``'s defaults (so required flags may come from it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no file at {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config {path}: expected a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            valid = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise ValueError(f"config {path}: unknown key {key!r}; valid keys: {valid}")
        action = actions[dest]
        action.required = False
        # Strings go through the flag's type (e.g. Path) as command-line values do.
        action.default = action.type(value) if isinstance(value, str) and action.type else value


def save_config(args: argparse.Namespace, out_dir: Path) -> Path:
    """Writes the effective configuration (every flag's final value) to ``out_dir/config.yaml``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = {k.replace("_", "-"): (str(v) if isinstance(v, Path) else v)
             for k, v in sorted(vars(args).items()) if not k.startswith("_") and k not in ("command", "config")}
    path = out_dir / "config.yaml"
    path.write_text(yaml.safe_dump(plain, sort_keys=True))
    return path
