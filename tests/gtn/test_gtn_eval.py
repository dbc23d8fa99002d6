"""``hyperkd gtn-eval`` end to end on a few dozen digits: every student × teacher × KD × seed run,
the table and plot, and a second call that reads the finished runs back."""
import csv

import torch

from hyperkd import models
from hyperkd.cli import main
from hyperkd.gtn.report import mean_std, summarise


def test_gtn_eval_runs_tabulates_and_resumes(tmp_path, tiny_digits, capsys):
    ckpt = tmp_path / "teacher.pt"
    torch.save({"model": models.create("resnet20", num_classes=10).state_dict()}, ckpt)
    argv = ["gtn-eval", "--teachers", f"gtn={ckpt}", "--teacher-model", "resnet20",
            "--students", "random:1", "--kd", "dkd", "--seeds", "1", "--epochs", "1",
            "--batch-size", "32", "--out", str(tmp_path / "eval")]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "eval" / "runs.csv")))
    assert [(r["student"], r["teacher"], r["kd"], r["seed"]) for r in rows] == [("random1", "gtn", "dkd", "1")]
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "| pool mean |" in table and "dkd / gtn" in table and "(1 seed)" in table
    assert (tmp_path / "eval" / "gtn_eval.png").stat().st_size > 0
    first = (tmp_path / "eval" / "runs" / "random1" / "gtn" / "dkd" / "seed1" / "last.pt").stat().st_mtime
    capsys.readouterr()
    assert main(argv) == 0  # finished runs are read back, not retrained
    assert (tmp_path / "eval" / "runs" / "random1" / "gtn" / "dkd" / "seed1" / "last.pt").stat().st_mtime == first


def test_pool_mean_is_over_seeds_of_the_random_students():
    rows = [{"student": s, "teacher": "gtn", "kd": "logit", "seed": seed, "test_acc": acc}
            for s, seed, acc in [("random1", 0, 0.5), ("random2", 0, 0.7), ("random1", 1, 0.6),
                                 ("random2", 1, 0.8), ("s_nas_s_small", 0, 0.1)]]
    cells = summarise(rows)
    assert cells[("pool mean", "gtn", "logit")] == [0.6, 0.7]
    assert cells[("s_nas_s_small", "gtn", "logit")] == [0.1]
    assert mean_std(cells[("pool mean", "gtn", "logit")]) == "65.00 ± 7.07 (2 seeds)"


def test_gtn_eval_names_bad_teachers(tmp_path, capsys):
    code = main(["gtn-eval", "--teachers", "vanilla", "--teacher-model", "resnet20", "--students", "random:1",
                 "--epochs", "1", "--out", str(tmp_path)])
    assert code == 2 and "method=CKPT" in capsys.readouterr().err
