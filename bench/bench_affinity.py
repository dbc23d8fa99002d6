"""Forward+backward of the fused mAKD loss (``makd:aff=,norm=,loss=`` through the registry, teacher
summary included) against its eager reference (``hyperkd/reference/affinity.py``) and torch.compile
of that reference, on B×D features: D = 64 (pooled penultimate features) to 16,384 (ResNet-20's
first stage, 16×32×32, flattened). Run through ``hyperkd bench --suite makd``.

Default: the eight variants that cover every affinity, normalisation and loss, at B = 128 and
D = 64 / 16,384; ``--full``: all 80 variants at B = 64 / 128 / 256 and D = 64 / 1,024 / 16,384.
Rows are keyed network = "D<width>", kind = the variant, so ``hyperkd bench`` renders them.
"""
import itertools

import pytest
import torch

import hyperkd.kd as kd
from bench.workloads import time_gradient_step
from hyperkd.reference import affinity as R

IMPLEMENTATIONS = ("fused", "eager", "compiled")
COVERING = [("l1", "l1", "l1"), ("l2", "l2", "l2"), ("ip", "avg", "sl1"), ("cs", "max", "kl"),
            ("ip", "none", "kl"), ("l1", "max", "sl1"), ("l2", "avg", "kl"), ("cs", "l2", "sl1")]


def cases(full):
    variants = list(itertools.product(R.AFFINITIES, R.NORMALISATIONS, R.LOSSES)) if full else COVERING
    batches = (64, 128, 256) if full else (128,)
    widths = (64, 1024, 16384) if full else (64, 16384)
    return [(d, b, v, impl) for d in widths for b in batches for v in variants for impl in IMPLEMENTATIONS]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        metafunc.parametrize("case", cases(full), ids=[f"D{d}-B{b}-{'-'.join(v)}-{impl}"
                                                       for d, b, v, impl in cases(full)])


def loss_fn(variant, impl):
    if impl == "fused":
        method = kd.make_method("makd:aff={},norm={},loss={}".format(*variant))
        return lambda s, t: kd.layerwise_loss(method, s, t)

    def reference(s, t):
        return R.makd_loss(s, t, *variant)
    return reference if impl == "eager" else torch.compile(reference, dynamic=False)


def test_makd(benchmark, device, case):
    width, batch, variant, impl = case
    torch.manual_seed(0)
    # Post-ReLU-like features, as taps give: the L1 kernels meet ties (sign 0).
    student = torch.randn(batch, width, device=device).relu_().requires_grad_()
    teacher = torch.randn(batch, width, device=device).relu_()
    time_gradient_step(benchmark, device, loss_fn(variant, impl), student, teacher, cpu_rounds=10,
                       network=f"D{width}", batch=batch, kind="-".join(variant), impl=impl)
