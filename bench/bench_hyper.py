"""Hypernetised training step: fused generation + fused W step against the eager
functional_call + split + torch-optimizer implementation and against hyperlight 0.0.5 itself, on
CPU; and the GPU rows (``--device cuda``).

Run: ``PYTHONPATH=. python -m pytest bench/bench_hyper.py --benchmark-json=/tmp/hyper-run.json
--results=bench/results/hyper.jsonl`` (the in-process benchmark's rows).
Each configuration is also run in a fresh process for its median step time and peak RSS; each
result, stamped with the device, torch/triton/hyperlight versions and date, is appended as a row to
``bench/results/hyper.jsonl``.

Fresh processes only, in a chosen order and file (e.g. alternating implementations, repeated,
on a noisy machine): ``PYTHONPATH=. python bench/bench_hyper.py --out FILE [--rounds N]
NETWORK:IMPL:HIDDEN:OPTIMIZER ...`` (HIDDEN as ``16,64,128``) runs the listed rows in order, the
whole list N times, appending each result to FILE as it comes. Needs the model zoo (``hyperkd.models``); without it every case
is skipped with that reason. The hyperlight rows need ``pip install -e '.[bench]'`` and are skipped
without it.

On a GPU: ``PYTHONPATH=. python bench/bench_hyper.py --device cuda --out FILE`` runs ``GPU_ROWS``
(VGG-19-bn and RepVGG-A2, [16, 64, 128], batch 16, SGD + momentum: the fused step with bf16 W and
state, then the eager implementation), each row reporting ``peak_cuda_allocated_bytes``
(``torch.cuda.max_memory_allocated()``; the goal is under 15 GiB for ``fused_bf16``). Without CUDA
it exits at once, saying so.
"""
import argparse
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _hyper_step import DEVICES, IMPLS, build, create_network, resolve_device  # noqa: E402
from bench.measure import append_rows, machine_rates, stamp  # noqa: E402

NETWORKS = ["resnet20", "resnet56", "vgg11_bn", "mobilenetv2_x1_4"]
HIDDEN = {"16-64-128": (16, 64, 128), "16-16-16": (16, 16, 16)}
OPTIMIZERS = ["sgd", "sgd_momentum"]
# The GPU target: fused step + bf16 W and state under a T4's 15 GiB, against eager (> 2×W).
GPU_ROWS = [f"{net}:{impl}:16,64,128:sgd_momentum" for net in ("vgg19_bn", "repvgg_a2")
            for impl in ("fused_bf16", "fused_bf16_unchained", "eager")]
# One pass over W per step: the chained fused step beside the unchained one (and hyperlight where it
# is installed), VGG-11-bn, batch 16, one fresh process per row, in this order:
#   PYTHONPATH=. python bench/bench_hyper.py --out FILE $(python -c "from bench.bench_hyper import CHAIN_ROWS; print(*CHAIN_ROWS)")
CHAIN_ROWS = [f"vgg11_bn:{impl}:16,64,128:{optimizer}" for optimizer in OPTIMIZERS
              for impl in ("fused_unchained", "fused", "fused_bf16_unchained", "fused_bf16")]
STEPS = 5  # timed steps per fresh process, after one warm-up step; the median is reported


def _version(package: str):
    """The installed version of ``package``, or None: the stamp says which peer was measured."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _stamp(device: torch.device) -> dict:
    return {**stamp(device), "hyperlight": _version("hyperlight")}


def _record(measured: dict, path: str = None, device: torch.device = torch.device("cpu")) -> None:
    """Appends one row (the result, stamped with ``device``, the versions and the date) to
    ``path`` (default: the suite's results data) right away, so an interrupted run keeps what it
    measured."""
    path = path or os.path.join(os.path.dirname(__file__), "results", "hyper.jsonl")
    append_rows(path, [{**_stamp(device), "batch": 16, **measured}])


def fresh_process(network: str, impl: str, hidden: str, optimizer: str, device: str = "cpu") -> dict:
    """One row measured in a process that runs nothing else: median step time and peak memory
    (RSS on the CPU, max_memory_allocated on CUDA)."""
    script = os.path.join(os.path.dirname(__file__), "_hyper_step.py")
    run = subprocess.run([sys.executable, script, network, impl, hidden, optimizer, str(STEPS),
                          "--device", device], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def _zoo_or_skip(network):
    try:
        create_network(network)
    except ImportError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("hidden", sorted(HIDDEN))
@pytest.mark.parametrize("impl", ["fused", "fused_unchained", "eager", "hyperlight", "primary"])
@pytest.mark.parametrize("network", NETWORKS)
def test_step(benchmark, network, impl, hidden, optimizer):
    _zoo_or_skip(network)
    if impl == "hyperlight":
        pytest.importorskip("hyperlight", reason="the hyperlight peer row needs hyperlight 0.0.5: "
                                                 "pip install -e '.[bench]'")
    # Peak RSS first, in a process that runs nothing else (and before this one holds a model).
    measured = fresh_process(network, impl, ",".join(map(str, HIDDEN[hidden])), optimizer)
    _, _, step = build(network, impl, HIDDEN[hidden], optimizer)
    step()
    benchmark.pedantic(step, rounds=2, iterations=1)
    benchmark.extra_info.update(measured)
    _record({**measured, "benchmark_min_s": benchmark.stats.stats.min})


def parse_rows(argv):
    """(arguments, rows split into [NETWORK, IMPL, HIDDEN, OPTIMIZER]); no rows means ``GPU_ROWS``
    with ``--device cuda``."""
    parser = argparse.ArgumentParser(description="fresh-process rows only, in the order given")
    parser.add_argument("--out", required=True, help="JSON-lines file the result rows are appended to")
    parser.add_argument("--rounds", type=int, default=1, help="times to run the whole list")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("rows", nargs="*", metavar="NETWORK:IMPL:HIDDEN:OPTIMIZER",
                        help="default with --device cuda: the GPU rows")
    args = parser.parse_args(argv)
    if not args.rows and args.device != "cuda":
        parser.error("rows: name at least one NETWORK:IMPL:HIDDEN:OPTIMIZER (only --device cuda has "
                     "default rows)")
    rows = [row.split(":") for row in args.rows or GPU_ROWS]
    for row in rows:
        if len(row) != 4:
            parser.error(f"rows: expected NETWORK:IMPL:HIDDEN:OPTIMIZER, got {':'.join(row)!r}")
        if row[1] not in IMPLS:
            parser.error(f"rows: IMPL must be one of {IMPLS}, got {row[1]!r} in {':'.join(row)!r}")
    return args, rows


def main(argv) -> None:
    args, rows = parse_rows(argv)
    device = resolve_device(args.device)  # before any subprocess: no CUDA, no run
    copy_gbps = machine_rates(device)["copy_gbps"]  # what the W-bound rows are held against
    print(json.dumps({"copy_gbps": copy_gbps}), flush=True)
    for _ in range(args.rounds):
        for row in rows:
            measured = fresh_process(*row, device=args.device)
            if measured.get("w_bytes_per_step"):
                gbps = measured["w_bytes_per_step"] / measured["step_s"] / 1e9
                measured.update(copy_gbps=copy_gbps, w_gbps=round(gbps, 1),
                                w_fraction_of_copy=round(gbps / copy_gbps, 2))
            _record(measured, args.out, device)
            print(json.dumps(measured), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
