"""Timing and peak-memory helpers shared by the benchmark suites.

Peak memory is the high-water mark of bytes allocated by torch's allocator above what was live
when the step started, during one forward+backward: ``max_memory_allocated`` on CUDA, and on the
CPU the same quantity read from the profiler's allocation events (its running "Total Allocated",
less the total before the session's first event).
Unlike peak RSS it does not depend on what the process ran earlier (a torch.compile warm-up
included), so every case is measured the same way without a subprocess each.

The machine's rates (``machine_rates``) are read when a run starts and when it ends and stored
with the results, so that a run on a loaded shared machine shows as one.

Results are data: each suite appends one row per measurement to ``bench/results/<suite>.jsonl``
(``append_rows``), every row stamped with the machine (device, CPU model, threads, the vector width
the C++ kernels were built for), the torch and triton versions, the commit and the run's date.
``bench/render_results.py`` renders the tables from those rows.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch


def peak_extra_bytes(step, device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        step()
    # Every allocation and free is a "[memory]" event carrying its size ("Bytes", negative for a
    # free) and the running "Total Allocated", intra-op temporaries included. That total is the
    # process's, not this session's: it carries what earlier profiler sessions allocated and did not
    # free, so the baseline (the total before the first event) is subtracted.
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]"]
    if not memory:
        return 0
    base = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(0, *(m["Total Allocated"] - base for m in memory))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` is empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_bits() -> int:
    """The SIMD width the C++ kernels use on this CPU: ``csrc/cpu/tile_gemm.h`` takes AVX-512's
    512-bit vectors where the build targets them (``-march=native`` on a CPU with avx512f), else
    256-bit ones. ``HYPERKD_PORTABLE=1`` builds never target AVX-512."""
    if os.environ.get("HYPERKD_PORTABLE", "0") == "1":
        return 256
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    return 512 if "avx512f" in flags else 256


def commit() -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def stamp(device: torch.device) -> dict:
    """What every row of a run carries: the machine, the versions, the commit and the run's date."""
    import triton

    return {
        "device": device_name(device),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "vector_bits": vector_bits(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # glibc allocator settings change CPU timings (see hyperkd/commands/bench.py).
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }


def rows_from_benchmark_json(results: dict) -> list:
    """One row per pytest-benchmark case: the case's ``extra_info`` (network, batch, kind, impl,
    peak bytes, ...), its median, IQR and rounds, and the run's stamp (``results["hyperkd"]``)."""
    run = results.get("hyperkd", {})
    return [{**run, **b["extra_info"], "median_s": b["stats"]["median"], "iqr_s": b["stats"].get("iqr"),
             "rounds": b["stats"].get("rounds")} for b in results["benchmarks"]]


def append_rows(path, rows) -> None:
    """Appends ``rows`` to the JSON-lines file ``path``, one compact object a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def read_rows(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def timed(step, device: torch.device) -> float:
    """Seconds one call of ``step`` takes, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    for _ in range(3):  # thread pools and caches warm
        fn()
    return statistics.median(timed(fn, device) for _ in range(repeats))


def machine_rates(device: torch.device, repeats: int = 50) -> dict:
    """fp32 GEMM GFLOP/s (4096×128 by 128×128, the size class of the suites' products) and copy
    GB/s (64 MiB, read plus write) on ``device``. A register-only FMA loop is no load indicator on
    a shared machine: on 2026-12-03 it read 184 of its idle 205 GFLOP/s on the 2-core development
    machine, while this GEMM ran at 116 against 171 idle and the width-128 SIREN step, fused and
    eager alike, took 1.5–1.6x its idle time."""
    a = torch.randn(4096, 128, device=device)
    b = torch.randn(128, 128, device=device)
    src = torch.empty(16 << 20, device=device)
    dst = torch.empty_like(src)
    gemm = _median_seconds(lambda: torch.mm(a, b), device, repeats)
    copy = _median_seconds(lambda: dst.copy_(src), device, repeats)
    return {"gemm_gflops": round(2 * a.shape[0] * a.shape[1] * b.shape[1] / gemm / 1e9, 1),
            "copy_gbps": round(2 * src.numel() * src.element_size() / copy / 1e9, 1)}
