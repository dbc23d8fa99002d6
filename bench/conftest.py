"""pytest-benchmark set-up: device selection, the stamp (machine, versions, commit, date) and the
machine's rates before and after the run in the JSON, and, with ``--results FILE``, the run's rows
appended to that suite's JSON-lines file (``hyperkd bench`` passes ``bench/results/<suite>.jsonl``)."""
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
    session.config.machine_rates_before = machine_rates(DEVICE)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["hyperkd"] = {**stamp(DEVICE), "machine_rates": {
        "before": config.machine_rates_before, "after": machine_rates(DEVICE)}}
    if config.getoption("--results"):
        append_rows(config.getoption("--results"), rows_from_benchmark_json(output_json))


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    """Each case compiles its torch.compile baseline afresh. The baselines of one suite wrap the
    same reference function, whose code object dynamo caches across cases: past its recompile
    limit (8 shapes) it silently ran the reference eagerly, and the "compiled" rows of a whole-grid
    run after the eighth case timed eager code."""
    torch._dynamo.reset()
    yield
