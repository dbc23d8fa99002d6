"""Timing and peak-memory helpers shared by the benchmark suites.

Peak memory is the high-water mark of bytes allocated by torch's allocator above what was live
when the step started, during one forward+backward: ``max_memory_allocated`` on CUDA, and on the
CPU the same quantity read from the profiler's allocation events (its running "Total Allocated",
less the total before the session's first event).
Unlike peak RSS it does not depend on what the process ran earlier (a torch.compile warm-up
included), so every case is measured the same way without a subprocess each.
"""
import datetime
import json
import os
import platform
import tempfile

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
