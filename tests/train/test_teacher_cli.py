"""`hyperkd teacher` end to end on the bundled digits, and its argument errors."""
import json

import pytest

from hyperkd import models
from hyperkd.cli import main


def test_teacher_trains_saves_best_and_resumes(tmp_path, capsys):
    out = tmp_path / "teacher"
    args = ["teacher", "--model", "resnet20", "--data", "digits", "--epochs", "1", "--out", str(out),
            "--batch-size", "128", "--lr", "0.05"]
    assert main(args) == 0
    assert "best epoch 0" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["lr"] == 0.05 and records[0]["ce"] > 0
    assert 0.0 <= records[0]["val_acc"] <= 1.0 and records[0]["test_acc"] is not None
    # best.pt is loadable by the zoo, strictly
    models.create("resnet20", num_classes=10, checkpoint=out / "best.pt")
    # a second epoch resumes from last.pt instead of starting over
    assert main(args[:6] + ["2"] + args[7:] + ["--resume"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet21"], "unknown model 'resnet21'; did you mean"),
    (["--model", "resnet20", "--data", "mnist"], "data set must be one of"),
])
def test_teacher_argument_errors(tmp_path, capsys, argv, message):
    code = main(["teacher", *argv, "--epochs", "1", "--out", str(tmp_path)])
    assert code == 2
    assert message in capsys.readouterr().err
