"""`hyperkd sweep` and `hyperkd demo` end to end on a cut of digits: tables, plots, skipping
finished runs; and the method-list parser."""
import csv

import pytest

from hyperkd.cli import main
from hyperkd.commands.demo import verdicts
from hyperkd.train import sweep
from tests.train.test_student import teacher  # noqa: F401 (the module-scoped teacher fixture)


def test_method_lists_keep_parameters_together_and_start_with_the_baseline():
    assert sweep.parse_methods("at0,at1:p=2,ab") == ["none", "at0", "at1:p=2", "ab"]
    assert sweep.parse_methods("ft:rate=2,p=1,none") == ["ft:rate=2,p=1", "none"]
    with pytest.raises(ValueError, match="unknown KD method 'atx'"):
        sweep.parse_methods("at0,atx")
    with pytest.raises(ValueError, match="names a method twice"):
        sweep.parse_methods("at0,at0")
    with pytest.raises(ValueError, match="comma-separated list"):
        sweep.parse_methods(" , ")


def test_the_no_kd_row_names_a_plain_student_as_such():
    results = {"none": [{"seed": 0, "test_acc": 0.5, "epoch": 1, "mean_epoch_time_s": 1.0,
                         "peak_memory_bytes": 2 ** 20}]}
    assert sweep.summary_rows(results)[0]["method"] == "No-KD (MIP)"
    assert sweep.summary_rows(results, hyper="none")[0]["method"] == "No-KD"


def test_sweep_writes_mean_std_tables_and_a_plot_and_skips_finished_runs(tiny_digits, teacher, tmp_path,
                                                                         capsys, monkeypatch):
    argv = ["sweep", "--model", "resnet20", "--teacher", str(teacher), "--methods", "at0,at2:p=4",
            "--seeds", "0,1", "--hidden", "4,8", "--epochs", "1", "--batch-size", "32",
            "--kd-weight", "0.03", "--out", str(tmp_path)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    for row in ("| Teacher |", "| No-KD (MIP) |", "| at0 |", "| at2:p=4 |"):
        assert row in table
    assert " ± " in table  # two seeds give a spread
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["No-KD (MIP)", "at0", "at2:p=4"]
    assert all(r["seeds"] == "2" for r in rows) and float(rows[0]["delta_no_kd"]) == 0.0
    assert (tmp_path / "convergence.png").stat().st_size > 0
    assert (tmp_path / "at2_p=4" / "seed1" / "summary.json").exists()

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep, "train_student", must_not_train)
    assert main(argv) == 0
    assert capsys.readouterr().out.count("| at0 |") == 1


def test_demo_prints_teacher_and_three_students_and_saves_the_plot(tiny_digits, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--teacher-epochs", "1", "--epochs", "1", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    for row in ("| Teacher |", "| No-KD (MIP) |", "| at0 |", "| ab |"):
        assert row in out
    assert "hyperkd sweep --model" in out  # the CIFAR-100 command
    assert (tmp_path / "convergence.png").exists() and (tmp_path / "results.md").exists()


def result(method, acc, std, seeds, diverged=0):
    return {"method": method, "test_acc": acc, "std": std, "seeds": seeds, "diverged": diverged}


def test_demo_verdicts_compare_the_gain_with_the_spread_and_need_two_seeds_a_side():
    base = result("No-KD (MIP)", 90.0, 0.5, 3)
    lines = verdicts([base, result("at0", 91.5, 0.5, 3), result("ab", 88.0, 0.4, 3), result("fsp", 90.6, 0.2, 3),
                      result("sp", 95.0, 0.0, 1), result("cwd", None, 0.0, 0, diverged=3)])
    assert lines[0].startswith("at0 beats No-KD by more than the spread: 91.50 ± 0.50 vs 90.00 ± 0.50")
    assert lines[1].startswith("ab falls behind No-KD by more than the spread")
    assert lines[2].startswith("fsp does not beat No-KD by more than the spread (the difference is within it)")
    assert lines[3] == ("sp: 95.00 vs No-KD 90.00 (difference +5.00) from 1 vs 3 seeds: no spread, so no "
                        "verdict (run three or more seeds, --seeds 0,1,2)")
    assert lines[4] == "cwd: no finished run to compare (3 diverged)"
