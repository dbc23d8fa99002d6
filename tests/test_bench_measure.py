"""bench/measure.py, the CPU peak every benchmark suite reports: one profiler session must not
inherit what an earlier session in the same process allocated and kept."""
import torch

from bench.measure import peak_extra_bytes

FLOATS = 1 << 20  # 4 MiB of float32
BYTES = 4 * FLOATS


def test_cpu_peak_ignores_earlier_profiler_sessions():
    kept = []
    cpu = torch.device("cpu")
    assert [peak_extra_bytes(lambda: kept.append(torch.ones(FLOATS)), cpu) for _ in range(3)] == [BYTES] * 3
    assert BYTES <= peak_extra_bytes(lambda: torch.ones(FLOATS).sum(), cpu) < BYTES + 1024
