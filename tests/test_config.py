"""YAML --config files: same keys as the flags, flags win, unknown keys named, saved beside results."""
import pytest
import yaml

from hyperkd.cli import parse_args
from hyperkd.config import save_config


def test_config_supplies_required_flags_and_flags_win(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": "resnet20", "epochs": 3, "out": str(tmp_path / "o"),
                                   "batch-size": 32, "lr": 0.2}))
    args = parse_args(["teacher", "--config", str(cfg), "--lr", "0.05"])
    assert (args.model, args.epochs, args.batch_size, args.lr) == ("resnet20", 3, 32, 0.05)
    assert args.out == tmp_path / "o"
    saved = yaml.safe_load(save_config(args, tmp_path / "o").read_text())
    assert saved["lr"] == 0.05 and saved["batch-size"] == 32 and saved["out"] == str(tmp_path / "o")


def test_unknown_config_key_is_named(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: resnet20\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["teacher", "--config", str(cfg), "--epochs", "1", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "unknown key 'learning_rate'; valid keys:" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["teacher", "--config", str(tmp_path / "nope.yaml")])
    assert "config: no file at" in capsys.readouterr().err
