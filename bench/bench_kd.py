"""Forward+backward time and peak memory of the fused layer-wise KD ops against their eager
references and ``torch.compile`` of those references, on the conv outputs of a CIFAR network:
ResNet-20's 19 (16×32×32 ×7, 32×16×16 ×6, 64×8×8 ×6, the default) or VGG-19-bn's 16
(``HYPERKD_BENCH_NET=vgg19``).

    python bench/bench_kd.py                       # all ops, writes bench/results/kd-<device>-<date>.json
    python bench/bench_kd.py -k "rkd" --batch 64   # extra arguments go to pytest
    python bench/bench_kd.py --summary bench/results/kd-resnet20-cpu-b16-<date>.json   # markdown table

Each row's ``extra_info`` holds the device, torch/triton versions, date, batch and the peak memory
of one fwd+bwd above the inputs, measured in a fresh subprocess (on the CPU: the peak RSS, reset
through /proc/self/clear_refs; on CUDA: torch.cuda.max_memory_allocated).
"""
import datetime
import json
import os
import platform
import subprocess
import sys

import pytest
import torch

BATCH = int(os.environ.get("HYPERKD_BENCH_BATCH", "16"))
DEVICE = os.environ.get("HYPERKD_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
NETS = {
    "resnet20": [(16, 32, 32)] * 7 + [(32, 16, 16)] * 6 + [(64, 8, 8)] * 6,
    "vgg19": [(64, 32, 32)] * 2 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 4 + [(512, 4, 4)] * 4
             + [(512, 2, 2)] * 4,
}
NET = os.environ.get("HYPERKD_BENCH_NET", "resnet20")
IMPLS = ("fused", "eager", "compiled")


def _ops():
    import hyperkd.kd as kd
    from hyperkd import reference as R

    def fused(name):
        return lambda s, t: kd.layerwise_loss(name, s, t)

    return {
        "at1:p=2": (fused("at1:p=2"), lambda s, t: R.attention_transfer_loss(s, t, kind=1, p=2.0)),
        "ab": (fused("ab"), lambda s, t: R.activation_boundary_loss(s, t, margin=1.0)),
        "sp": (fused("sp"), lambda s, t: R.similarity_preserving_losses(s, t).sum()),
        "rkd-d": (fused("rkd-d"), lambda s, t: R.rkd_losses(s, t, 1.0, 0.0).sum()),
        "rkd-a": (fused("rkd-a"), lambda s, t: R.rkd_losses(s, t, 0.0, 1.0).sum()),
        "cwd": (fused("cwd"), lambda s, t: R.cwd_losses(s, t, 4.0).sum()),
        "fitnets": (fused("fitnets"), lambda s, t: R.fitnets_losses(s, t).sum()),
    }


def _features(batch, device):
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(batch, *shape, generator=gen).to(device).requires_grad_() for shape in NETS[NET]]
    teacher = [torch.randn(batch, *shape, generator=gen).to(device) for shape in NETS[NET]]
    return student, teacher


def _step_fn(op, impl):
    fused, reference = _ops()[op]
    fn = {"fused": fused, "eager": reference, "compiled": torch.compile(reference)}[impl]

    def step(student, teacher):
        loss = fn(student, teacher)
        return torch.autograd.grad(loss, student)

    return step


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def stamp():
    import triton

    name = torch.cuda.get_device_name() if DEVICE == "cuda" else f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()}"
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "batch": BATCH, "net": NET, "layers": len(NETS[NET]), "threads": torch.get_num_threads()}


def _rss(key):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(key))


def measure_peak(op, impl, batch, device):
    """Peak bytes of one fwd+bwd above the live inputs (run in a fresh process by peak_bytes)."""
    student, teacher = _features(batch, device)
    step = _step_fn(op, impl)
    step(student, teacher)  # warm-up (and compilation) are not part of the peak
    _sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(student, teacher)
        _sync()
        return torch.cuda.max_memory_allocated() - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak RSS
    before = _rss("VmRSS")
    step(student, teacher)
    return _rss("VmHWM") - before


def peak_bytes(op, impl):
    # A fixed mmap threshold makes glibc return every block ≥ 64 KiB to the OS when it is freed, so
    # buffers freed by the warm-up cannot hide the measured call's peak from the RSS.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--peak", op, impl, str(BATCH), DEVICE],
                         capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.split()[-1])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(_ops()))
def test_fwd_bwd(benchmark, op, impl):
    if op == "rkd-a" and impl != "fused" and BATCH > 32:
        pytest.skip("the naive B×B×D angle tensor of the reference needs > 4 GiB at this batch")
    student, teacher = _features(BATCH, DEVICE)
    step = _step_fn(op, impl)
    step(student, teacher)

    def run():
        step(student, teacher)
        _sync()

    benchmark.group = op
    benchmark.extra_info.update(stamp(), impl=impl, peak_bytes=peak_bytes(op, impl))
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)


def summary(path):
    """A markdown table of a results file: median ms and peak MiB per op and implementation, and
    the fused op's speed-up and memory ratio against each baseline."""
    with open(path) as f:
        rows = json.load(f)["benchmarks"]
    table = {}
    for row in rows:
        info = row["extra_info"]
        table.setdefault(row["group"], {})[info["impl"]] = (row["stats"]["median"] * 1e3, info["peak_bytes"] / 2 ** 20)
    lines = ["| op | impl | median ms | peak MiB | fused speed-up | fused memory ratio |", "|---|---|---|---|---|---|"]
    for op, impls in table.items():
        fused_ms, fused_mib = impls.get("fused", (float("nan"), float("nan")))
        for impl, (ms, mib) in impls.items():
            lines.append(f"| {op} | {impl} | {ms:.1f} | {mib:.1f} | {ms / fused_ms:.2f}x | "
                         f"{mib / max(fused_mib, 1e-9):.1f}x |")
    return "\n".join(lines)


def main(argv):
    if argv[:1] == ["--summary"]:
        print(summary(argv[1]))
        return 0
    if argv[:1] == ["--peak"]:
        op, impl, batch, device = argv[1], argv[2], int(argv[3]), argv[4]
        print(measure_peak(op, impl, batch, device))
        return 0
    if "--batch" in argv:
        i = argv.index("--batch")
        os.environ["HYPERKD_BENCH_BATCH"] = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    batch = os.environ.get("HYPERKD_BENCH_BATCH", str(BATCH))
    date = datetime.date.today().isoformat()
    out = os.path.join(os.path.dirname(__file__), "results", f"kd-{NET}-{DEVICE}-b{batch}-{date}.json")
    return subprocess.call([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                            f"--benchmark-json={out}", "--benchmark-columns=min,median,max",
                            "--benchmark-sort=name", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
