"""Timing and peak-memory helpers shared by the benchmark suites.

Peak memory is the high-water mark of bytes allocated by torch's allocator above what was live
when the step started, during one forward+backward: ``max_memory_allocated`` on CUDA, and on the
CPU the same quantity read from the profiler's allocation events (its running "Total Allocated",
less the total before the session's first event).
Unlike peak RSS it does not depend on what the process ran earlier (a torch.compile warm-up
included), so every case is measured the same way without a subprocess each.

The machine's rates (``machine_rates``) are read when a run starts and when it ends and stored
with the results, so that a run on a loaded shared machine shows as one.
"""
import datetime
import json
import os
import platform
import statistics
import tempfile
import time

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
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def stamp(device: torch.device) -> dict:
    import triton

    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # glibc allocator settings change CPU timings (see hyperkd/commands/bench.py).
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }


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
