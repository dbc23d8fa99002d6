"""pytest-benchmark set-up: device selection, the stamp (machine, versions, commit, date) and the
machine's rates before and after the run in the JSON, and, with ``--results FILE``, each case's row
appended to that suite's JSON-lines file as it finishes (``hyperkd bench`` passes
``bench/results/<suite>.jsonl``)."""
import os

import pytest
import torch

from bench.measure import append_rows, machine_rates, rows_from_benchmark_json, stamp

DEVICE = torch.device(os.environ.get("HYPERKD_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="every network, batch and kind")
    parser.addoption("--results", default=None, metavar="FILE",
                     help="append one row per case to this JSON-lines file (needs --benchmark-json)")


@pytest.fixture(scope="session")
def device():
    return DEVICE


@pytest.fixture(scope="session")
def full(request):
    return request.config.getoption("--full")


def pytest_sessionstart(session):
    session.config.run_stamp = {**stamp(DEVICE), "machine_rates": {"before": machine_rates(DEVICE)}}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    rates = config.run_stamp["machine_rates"]
    output_json["hyperkd"] = {**config.run_stamp, "machine_rates": {**rates, "after": machine_rates(DEVICE)}}


@pytest.fixture(autouse=True)
def results_row(request):
    """With ``--results``, appends each case's row as soon as the case has run, stamped with the
    run's stamp, so a run that is stopped (or killed for memory) keeps what it measured."""
    path = request.config.getoption("--results")
    bench = request.getfixturevalue("benchmark") if path and "benchmark" in request.fixturenames else None
    yield
    if bench is None or bench.stats is None:  # skipped, or failed before it was timed
        return
    stats = bench.stats.stats
    measured = {"extra_info": bench.extra_info,
                "stats": {"median": stats.median, "iqr": stats.iqr, "rounds": stats.rounds}}
    append_rows(path, rows_from_benchmark_json({"hyperkd": request.config.run_stamp, "benchmarks": [measured]}))


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    """Each case compiles its torch.compile baseline afresh. The baselines of one suite wrap the
    same reference function, whose code object dynamo caches across cases: past its recompile
    limit (8 shapes) it silently ran the reference eagerly, and the "compiled" rows of a whole-grid
    run after the eighth case timed eager code."""
    torch._dynamo.reset()
    yield
