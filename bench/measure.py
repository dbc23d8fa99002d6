"""Timing and peak-memory helpers shared by the benchmark suites.

Peak memory is the high-water mark of bytes allocated by torch's allocator above what was live
when the step started, during one forward+backward: ``max_memory_allocated`` on CUDA, and on the
CPU the same quantity rebuilt from the profiler's per-op allocation/free records. Unlike peak RSS it does
not depend on what the process ran earlier, so every case is measured the same way.
"""
import datetime
import platform

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
    # Each op's own allocations minus its own frees, at its start time: intra-op temporaries are
    # not seen, the outputs and saved tensors that make up a step's footprint are.
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


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
    }
