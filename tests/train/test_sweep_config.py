"""`hyperkd sweep --config FILE`: the file's keys (list values included) become the flags'
defaults, the command line wins, and the effective configuration is saved beside the results."""
import csv

import torch
import yaml

from hyperkd import models
from hyperkd.cli import main
from hyperkd.train.checkpoint import save_checkpoint


def test_sweep_runs_from_a_config_file_and_the_command_line_wins(tiny_digits, tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    save_checkpoint(teacher, {"model": models.create("resnet20", 10).state_dict()})
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"model": "resnet20", "teacher": str(teacher), "methods": "at0",
                                      "seeds": [0, 1], "hidden": [4, 8], "epochs": 1, "batch-size": 32,
                                      "kd-weight": 0.03, "out": str(tmp_path / "sweep")}))
    assert main(["sweep", "--config", str(config), "--seeds", "1"]) == 0
    assert "| at0 |" in capsys.readouterr().out
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seeds"]) for r in rows] == [("No-KD (MIP)", "1"), ("at0", "1")]
    assert (tmp_path / "sweep" / "at0" / "seed1" / "summary.json").is_file()
    assert not (tmp_path / "sweep" / "at0" / "seed0").exists()
    saved = yaml.safe_load((tmp_path / "sweep" / "config.yaml").read_text())
    assert (saved["methods"], saved["seeds"], saved["hidden"], saved["epochs"], saved["kd-weight"]) == \
        ("at0", [1], [4, 8], 1, 0.03)
