"""Decode throughput of the fused siren_decode op against the eager reference and torch.compile
of it: full decode of every conv kernel (forward) and forward+backward on a 4096-kernel batch,
for SIREN predictors of several widths over ResNet-20/56 and VGG-11-bn. Run through
``hyperkd bench --suite siren`` (``--full`` for every net and width)."""
import pytest
import torch

import hyperkd.models
from bench.measure import peak_extra_bytes
from hyperkd.siren import KernelLayout, WeightPredictor

IMPLEMENTATIONS = ("fused", "eager", "compiled")
KERNEL_BATCH = 4096


def cases(full):
    nets = ("resnet20", "resnet56", "vgg11_bn") if full else ("resnet20",)
    widths = (64, 128, 280, 680) if full else (64,)
    return [(n, w, m) for n in nets for w in widths for m in ("fwd", "fwd+bwd")]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        metafunc.parametrize("case", cases(full), ids=[f"{n}-W{w}-{m}" for n, w, m in cases(full)])


def decoder(predictor, impl):
    eager = lambda coords: predictor(coords, backend="eager")
    if impl == "fused":
        return lambda coords: predictor(coords, backend="fused")
    return eager if impl == "eager" else torch.compile(eager, dynamic=False)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_siren_decode(benchmark, device, case, impl):
    network, width, mode = case
    layout = KernelLayout(hyperkd.models.create(network, 10))
    predictor = WeightPredictor(layout.grid, layout.output_size, encoding="siren", width=width).to(device)
    coords = layout.canonical_coords(device)
    if mode == "fwd+bwd":
        coords = coords[torch.randperm(len(coords), generator=torch.Generator().manual_seed(0))
                        [:KERNEL_BATCH].to(device)]
    decode = decoder(predictor, impl)
    params = list(predictor.parameters())

    def step():
        if mode == "fwd":
            with torch.no_grad():
                out = decode(coords)
        else:
            out = torch.autograd.grad(decode(coords).square().sum(), params)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    step()  # compile / autotune outside the timed region
    flops = 2 * len(coords) * (width * width * (predictor.depth - 2) + width * layout.output_size)
    benchmark.extra_info.update(network=network, batch=len(coords), kind=f"W{width} {mode}", impl=impl,
                                flops=flops * (3 if mode == "fwd+bwd" else 1),
                                peak_extra_bytes=peak_extra_bytes(step, device))
    # A 4096-kernel fwd+bwd step takes milliseconds, where shared CPUs' noise is a large share of a
    # 5-round median; full decodes take up to tens of seconds each and stay at 5 rounds.
    rounds = 50 if device.type == "cuda" else 15 if mode == "fwd+bwd" else 5
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)
