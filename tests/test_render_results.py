"""bench/render_results.py and the rows bench/measure.py writes: each machine's table takes every
case from its latest run, and the headline spans one machine's cases per op family."""
import json

import pytest
import torch

from bench import measure, render_results as rr

XEON = {"device": "cpu", "cpu": "Xeon", "threads": 2, "vector_bits": 512, "torch": "2.14.1", "triton": "3.8.0",
        "commit": "abc1234"}
EPYC = {**XEON, "cpu": "EPYC", "vector_bits": 256}


def row(machine, date, kind, impl, ms, mib, batch=64):
    return {**machine, "date": date, "network": "resnet20", "batch": batch, "kind": kind, "impl": impl,
            "median_s": ms / 1e3, "peak_extra_bytes": mib * 2 ** 20, "output_bytes": 100 * 2 ** 20}


def test_rows_are_stamped_appended_and_read_back(tmp_path):
    stamp = measure.stamp(torch.device("cpu"))
    assert {"device", "cpu", "threads", "vector_bits", "torch", "triton", "commit", "date"} <= set(stamp)
    assert stamp["vector_bits"] in (256, 512)
    results = {"hyperkd": stamp, "benchmarks": [
        {"extra_info": {"network": "resnet20", "batch": 16, "kind": "ab", "impl": "fused"},
         "stats": {"median": 0.5, "iqr": 0.1, "rounds": 15}}]}
    path = tmp_path / "activation_boundary.jsonl"
    for _ in range(2):
        measure.append_rows(path, measure.rows_from_benchmark_json(results))
    rows = measure.read_rows(path)
    assert len(rows) == 2 and rows[0] == rows[1]
    assert rows[0]["median_s"] == 0.5 and rows[0]["kind"] == "ab" and rows[0]["date"] == stamp["date"]
    assert len(path.read_text().splitlines()) == 2


def test_each_case_comes_from_its_latest_run_per_machine():
    old = "2026-12-01T00:00:00+00:00"
    new = "2026-12-04T00:00:00+00:00"
    rows = [row(XEON, old, "ab", "fused", 10, 102), row(XEON, old, "ab", "eager", 40, 108),
            row(XEON, old, "sp", "fused", 10, 102), row(XEON, old, "sp", "eager", 20, 104),
            # a later run of AB alone, fused only: it replaces AB's case, SP's stays
            row(XEON, new, "ab", "fused", 8, 102),
            row(EPYC, old, "ab", "fused", 30, 102)]
    chosen = rr.latest(rows, "relational")
    assert set(chosen) == {"Xeon, 2 threads, 512-bit vectors", "EPYC, 2 threads, 256-bit vectors"}
    xeon = chosen["Xeon, 2 threads, 512-bit vectors"]
    assert sorted((r["kind"], r["impl"], r["date"]) for r in xeon) == [
        ("ab", "fused", new), ("sp", "eager", old), ("sp", "fused", old)]
    table = rr.case_table(xeon)
    assert table[2] == "| resnet20 B=64 ab | 8.00 | – | – | – | – | 102.0 | – | – | – |"
    assert table[3] == "| resnet20 B=64 sp | 10.00 | 20.00 | – | 2.00x | – | 102.0 | 104.0 | – | 50% |"


def test_headline_spans_one_machines_cases_per_family(tmp_path):
    date = "2026-12-04T00:00:00+00:00"
    ab = [row(XEON, date, "ab", "fused", 10, 102), row(XEON, date, "ab", "eager", 40, 108),
          row(XEON, date, "ab", "compiled", 20, 104),
          row(XEON, date, "ab", "fused", 10, 101, batch=16), row(XEON, date, "ab", "eager", 30, 104, batch=16),
          row(EPYC, "2026-12-01T00:00:00+00:00", "ab", "fused", 1, 101),
          row(EPYC, "2026-12-01T00:00:00+00:00", "ab", "eager", 100, 200)]
    text = rr.headline({"activation_boundary": ab})  # default machine: the newest layer-wise row's
    lines = text.splitlines()
    assert lines[2] == "| activation boundary (AB) | 3.0–4.0x | 2.0x | 25% |"
    assert "CPU: Xeon, 2 threads, 512-bit vectors" in lines[-1] and "2026-12-04" in lines[-1]
    assert "100.0x" in rr.headline({"activation_boundary": ab}, "EPYC")
    # a suite's kinds without names of their own share its family's label
    makd = [{**r, "kind": "cs-l2-sl1"} for r in ab[:3]]
    assert "| affinity KD (mAKD), every variant | 4.0x | 2.0x | 25% |" in rr.headline(
        {"activation_boundary": ab, "makd": makd})
    # the newest row of the layer-wise suites names the machine, whichever suite holds it
    at = [{**r, "kind": "AT-1 raw", "date": "2026-12-05T00:00:00+00:00"} for r in ab[-2:]]
    later = rr.headline({"activation_boundary": ab, "attention_transfer": at})
    assert "CPU: EPYC" in later.splitlines()[-1] and "| attention transfer (AT) | 100.0x |" in later

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{rr.HEADLINE_BEGIN}\nold\n{rr.HEADLINE_END}\ntail\n")
    assert rr.write_headline(text, readme)
    assert readme.read_text() == f"# x\n{rr.HEADLINE_BEGIN}\n{text}\n{rr.HEADLINE_END}\ntail\n"
    readme.write_text("no markers\n")
    assert not rr.write_headline(text, readme)


def test_the_grid_summary_counts_the_variants_that_meet_each_target():
    date = "2026-12-04T00:00:00+00:00"
    rows = []
    # ip: 3× eager, 1.5× compiled; l1: 1.5× eager, 0.8× compiled (slower than compiled).
    for kind, eager, compiled in (("ip-l2-l2", 30, 15), ("l1-l1-l1", 15, 8)):
        for impl, ms in (("fused", 10), ("eager", eager), ("compiled", compiled)):
            r = row(XEON, date, kind, impl, ms, 101 if impl == "fused" else 110, batch=64)
            rows.append({**r, "network": "D64"})
    lines = rr.grid_summary(rows)
    assert lines[2] == "| 64 | 64 | 2 | 1 | 1 | 1.50× (l1-l1-l1) | 0.80× (l1-l1-l1) | 64.0 |"
    doc = rr.grid_block({"makd": rows}, "makd_grid")
    assert "**Xeon, 2 threads, 512-bit vectors**" in doc and lines[2] in doc


def test_committed_results_render():
    """Every committed row parses and every suite renders (a malformed row fails here, not in CI's
    rendering step)."""
    data = rr.suites()
    assert set(rr.LAYERWISE) | {"siren", "hyper"} <= set(data) and "kd" not in data
    text = rr.results_readme(data)
    for suite in data:
        assert f"## {suite}" in text
    assert json.loads(json.dumps(data["relational"][0]))["date"]
    assert "| attention transfer (AT) |" in rr.headline(data)
    block = rr.docs_block(data, ",".join(rr.LAYERWISE))
    for family in ("attention transfer (AT)", "activation boundary (AB)", "relational KD, angle (RKD-A)",
                   "FitNets hint"):
        assert f"| {family} |" in block
    assert "`bench/results/channelwise.jsonl`" in block and "README.md#relational" in block


def test_rows_of_other_suites_render_as_plain_tables():
    step = {**XEON, "date": "2026-12-04T00:00:00+00:00", "network": "vgg11_bn", "impl": "fused",
            "hidden": "16,64,128", "optimizer": "sgd", "step_s": 0.25}
    assert rr.rows_table([step])[2] == "| vgg11_bn | fused | 16,64,128 | sgd | 0.25 |"
    assert rr.rows_table([row(XEON, step["date"], "ab", "fused", 8, 102)])[0].startswith("| case | fused ms |")


def test_bench_outside_a_source_checkout_says_where_the_suites_are(tmp_path):
    from hyperkd.commands.bench import suite_path

    with pytest.raises(FileNotFoundError, match="source checkout.*--source"):
        suite_path(tmp_path, "relational")
    assert suite_path(rr.ROOT, "relational") == rr.ROOT / "bench" / "bench_relational.py"


def test_every_suite_is_a_file_of_the_checkout_and_the_split_kd_suite_names_its_successors(capsys):
    from hyperkd import cli
    from hyperkd.commands.bench import SUITES, suite_path

    assert all(suite_path(rr.ROOT, suite).is_file() for suite in SUITES)
    assert set(rr.LAYERWISE) <= set(SUITES) and "kd" not in SUITES
    with pytest.raises(SystemExit) as stop:
        cli.main(["bench", "--suite", "kd"])
    assert stop.value.code == 2
    assert "split by op family: run --suite attention_transfer, activation_boundary, relational, channelwise" in (
        capsys.readouterr().err)


def test_peers_plot_is_a_png_of_the_newest_machine(tmp_path):
    date = "2026-12-04T00:00:00+00:00"
    rows = [row(EPYC, "2026-12-01T00:00:00+00:00", "AT", "fused", 90, 40),
            row(XEON, date, "AT", "fused", 100, 50), row(XEON, date, "AT", "hyperlight+torchdistill", 300, 150)]
    path = tmp_path / "peers.png"
    assert rr.peers_plot(rows, path) == "Xeon, 2 threads, 512-bit vectors"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
