"""bench/makd_floor.py, the script behind docs/makd.md's floors: it runs at a small size, appends one
row per case, and its product floors are the multiply-add counts at the measured GEMM rate. Nothing
asserts on the times themselves."""
import json

import pytest

from bench import makd_floor


def test_rows_hold_every_timing_and_the_product_floors(tmp_path, monkeypatch):
    monkeypatch.setattr(makd_floor, "machine_rates", lambda device: {"gemm_gflops": 50.0, "copy_gbps": 10.0})
    out = tmp_path / "floor.jsonl"
    makd_floor.main(["--cases", "4:8:ip-none-l1", "3:5:cs-l2-sl1", "--calls", "2", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["batch"], r["width"], r["kind"]) for r in rows] == [(4, 8, "ip-none-l1"), (3, 5, "cs-l2-sl1")]
    for r in rows:
        for key in ("fused_us", "eager_us", "summary_op_us", "loss_with_grad_op_us", "trivial_grad_us"):
            assert r[key] > 0, key
        macs = r["batch"] ** 2 * r["width"]
        assert r["eager_products_us"] == 2 * r["fused_products_us"] == 4 * macs * 2 / 50e3
        assert r["eager_over_fused"] == round(r["eager_us"] / r["fused_us"], 3)


@pytest.mark.parametrize("case, message", [("64:64", "expected B:D:AFF-NORM-LOSS"),
                                           ("1:64:ip-none-l1", "B ≥ 2"),
                                           ("64:64:cos-none-l1", "aff: expected one of l1, l2, ip, cs"),
                                           ("64:64:ip-none", "expected AFF-NORM-LOSS")])
def test_a_malformed_case_is_refused_naming_the_option(case, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        makd_floor.main(["--cases", case, "--out", str(tmp_path / "floor.jsonl")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--cases" in err and message in err
    assert not (tmp_path / "floor.jsonl").exists()


def test_calls_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        makd_floor.main(["--calls", "0", "--out", str(tmp_path / "floor.jsonl")])
    assert "--calls: expected a positive number of calls, got 0" in capsys.readouterr().err
