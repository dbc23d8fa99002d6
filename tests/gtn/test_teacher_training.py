"""Grafted teacher training end to end on a few dozen digits: metrics per branch, the plot, a
teacher-only best.pt, resume, and the frozen warm-up."""
import json

import pytest
import torch

from hyperkd import models
from hyperkd.gtn.train import GraftConfig, train_grafted_teacher


def test_grafted_teacher_trains_and_resumes(tmp_path, tiny_digits):
    cfg = GraftConfig(method="gtn", freeze_teacher_epochs=1)
    run = dict(epochs=1, batch_size=32, progress=False)
    train_grafted_teacher("resnet20", "digits", tmp_path, cfg, **run)
    torch.manual_seed(0)  # the run's seed: the same initial teacher
    start = models.create("resnet20", num_classes=10)
    best = models.create("resnet20", num_classes=10, checkpoint=tmp_path / "best.pt")  # teacher only
    frozen = [torch.equal(a, b) for a, b in zip(start.parameters(), best.parameters())]
    train_grafted_teacher("resnet20", "digits", tmp_path, cfg, **{**run, "epochs": 2}, resume=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert [r["teacher_frozen"] for r in records] == [True, False]
    for b in (1, 2, 3):
        assert 0 <= records[-1][f"branch{b}/val_acc"] <= 1 and records[-1][f"branch{b}/kl"] >= 0
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert frozen and all(frozen), "the teacher moved while frozen"


def test_vanilla_has_no_branches_and_bad_method_is_named(tmp_path, tiny_digits):
    train_grafted_teacher("resnet20", "digits", tmp_path, GraftConfig(method="vanilla"), epochs=1,
                          batch_size=32, progress=False)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert "branches" not in record and "branch1/val_acc" not in record and "ce" in record
    with pytest.raises(ValueError, match="method: expected one of"):
        train_grafted_teacher("resnet20", "digits", tmp_path / "x", GraftConfig(method="kd"), epochs=1)


def test_teacher_command_names_a_bad_graft_setting(tmp_path, capsys):
    from hyperkd.cli import main

    code = main(["teacher", "--model", "resnet20", "--epochs", "1", "--out", str(tmp_path / "t"),
                 "--method", "gtn", "--tau", "0"])
    assert code == 2 and "alpha >= 0 and tau > 0" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # refused before anything was written
