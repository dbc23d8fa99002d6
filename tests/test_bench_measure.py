"""bench/measure.py, the CPU peak every benchmark suite reports: one profiler session must not
inherit what an earlier session in the same process allocated and kept."""
import torch

from bench.measure import peak_extra_bytes

FLOATS = 1 << 20  # 4 MiB of float32
BYTES = 4 * FLOATS
# What a build's allocator or the profiler itself may add to a session (alignment, small
# bookkeeping tensors): far below the 4 MiB an inherited earlier session would add.
SLACK = 64 * 2 ** 10


def test_cpu_peak_ignores_earlier_profiler_sessions():
    kept = []
    cpu = torch.device("cpu")
    peaks = [peak_extra_bytes(lambda: kept.append(torch.ones(FLOATS)), cpu) for _ in range(3)]
    peaks.append(peak_extra_bytes(lambda: torch.ones(FLOATS).sum(), cpu))
    assert all(BYTES <= p < BYTES + SLACK for p in peaks), peaks


def test_table_reports_speedups_and_workspace_without_the_returned_gradients():
    from hyperkd.commands.bench import render

    def entry(impl, seconds, peak):
        return {"stats": {"median": seconds},
                "extra_info": {"network": "resnet20", "batch": 64, "kind": "AT-0 raw", "impl": impl,
                               "peak_extra_bytes": peak, "output_bytes": 100 * 2 ** 20}}

    table = render({"benchmarks": [entry("fused", 0.010, 102 * 2 ** 20), entry("eager", 0.040, 108 * 2 ** 20),
                                   entry("compiled", 0.020, 104 * 2 ** 20)]})
    row = table.splitlines()[-1]
    assert row == ("| resnet20 B=64 AT-0 raw | 10.00 | 40.00 | 20.00 | 4.00x | 2.00x | 102.0 | 108.0 "
                   "| 104.0 | 25% |")

    # A skipped baseline shows as "–"; a peer library's row goes to its own table.
    table = render({"benchmarks": [entry("fused", 0.010, 102 * 2 ** 20), entry("eager", 0.040, 108 * 2 ** 20),
                                   entry("torchdistill", 0.050, 204 * 2 ** 20)]})
    lines = table.splitlines()
    assert lines[4] == ("| resnet20 B=64 AT-0 raw | 10.00 | 40.00 | – | 4.00x | – | 102.0 | 108.0 "
                        "| – | 25% |")
    assert lines[-1] == "| resnet20 B=64 AT-0 raw | torchdistill | 10.00 | 50.00 | 5.00x | 102.0 | 204.0 | 2.0x |"


def test_machine_rates_are_measured_and_shown_in_the_table_header():
    from bench.measure import machine_rates
    from hyperkd.commands.bench import render

    rates = machine_rates(torch.device("cpu"), repeats=3)
    assert set(rates) == {"gemm_gflops", "copy_gbps"}
    assert all(0 < v < float("inf") for v in rates.values())

    stamp = {"device": "cpu", "machine_rates": {"before": {"gemm_gflops": 171.0, "copy_gbps": 20.5},
                                                "after": {"gemm_gflops": 116.5, "copy_gbps": 16.7}}}
    lines = render({"benchmarks": [], "hyperkd": stamp}).splitlines()
    assert lines[1] == ("machine: GEMM 171.0 → 116.5 GFLOP/s, copy 20.5 → 16.7 GB/s "
                        "(before → after the run)")
    # Results written before the rates were recorded render without the line.
    assert render({"benchmarks": [], "hyperkd": {"device": "cpu"}}).splitlines()[1] == ""


def test_bench_command_runs_a_suite_appends_its_rows_and_prints_the_table(tmp_path, capsys):
    """``hyperkd bench`` end to end on a source checkout whose AB suite is one trivial case: the
    harness files are the repository's, so the subprocess, the --results rows and the table are
    the real ones."""
    import json
    import shutil
    from pathlib import Path

    from hyperkd import cli

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "bench").mkdir()
    for name in ("__init__.py", "conftest.py", "measure.py", "render_results.py"):
        shutil.copy(repo / "bench" / name, tmp_path / "bench" / name)
    (tmp_path / "bench" / "bench_activation_boundary.py").write_text(
        "def test_activation_boundary(benchmark):\n"
        "    benchmark.extra_info.update(network='tiny', batch=2, kind='ab', impl='fused',\n"
        "                                peak_extra_bytes=3 * 2 ** 20, output_bytes=2 ** 20)\n"
        "    benchmark.pedantic(lambda: None, rounds=3)\n")
    out = tmp_path / "results"
    out.mkdir()
    assert cli.main(["bench", "--suite", "activation_boundary", "--source", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| tiny B=2 ab |" in printed and f"rows appended to {out / 'activation_boundary.jsonl'}" in printed
    rows = [json.loads(line) for line in (out / "activation_boundary.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["network"] == "tiny" and rows[0]["rounds"] == 3
    # Each row is appended as its case finishes, so it carries the rates taken when the run began.
    assert rows[0]["peak_extra_bytes"] == 3 * 2 ** 20 and set(rows[0]["machine_rates"]) == {"before"}
