"""Fused attention-transfer loss (fwd+bwd) against the eager reference and torch.compile of it,
on the conv outputs of CIFAR ResNet-20 and VGG-19-bn. Run through ``hyperkd bench``.

The teacher is given two ways. ``raw``: its B×C×H×W features, whose maps every implementation
computes inside the timed step. ``summary``: the normalised maps, computed once outside the step,
as a training loop does right after the teacher's forward (the eager reference then takes them
with ``teacher_is_summary=True``).
"""
import functools

import pytest
import torch

import hyperkd
from bench.measure import peak_extra_bytes
from bench.workloads import features
from hyperkd import reference

IMPLEMENTATIONS = ("fused", "eager", "compiled")
TEACHERS = ("raw", "summary")
_compiled = torch.compile(reference.attention_transfer_loss, dynamic=False)


def loss_fn(impl, teacher):
    if impl == "fused":
        return hyperkd.functional.attention_transfer_loss
    fn = reference.attention_transfer_loss if impl == "eager" else _compiled
    return functools.partial(fn, teacher_is_summary=True) if teacher == "summary" else fn


def cases(full):
    nets = ("resnet20", "vgg19_bn") if full else ("resnet20",)
    batches = (16, 64, 128) if full else (64,)
    return [(n, b, k, t) for n in nets for b in batches for k in (0, 1, 2) for t in TEACHERS]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        metafunc.parametrize("case", cases(full), ids=[f"{n}-B{b}-at{k}-{t}" for n, b, k, t in cases(full)])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_attention_transfer(benchmark, device, case, impl):
    network, batch, kind, teacher_form = case
    p = 1.0 if kind == 0 else 2.0
    student, teacher = features(network, batch, device)
    if teacher_form == "summary":
        teacher = hyperkd.functional.attention_teacher_summary(teacher, kind, p)
    fn = loss_fn(impl, teacher_form)

    def step():
        loss = fn(student, teacher, kind=kind, p=p, reduction="mean")
        grads = torch.autograd.grad(loss, student)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return grads

    step()  # compile / autotune outside the timed region
    gradient_bytes = sum(s.numel() * s.element_size() for s in student)
    benchmark.extra_info.update(network=network, batch=batch, kind=f"AT-{kind} {teacher_form}", impl=impl,
                                peak_extra_bytes=peak_extra_bytes(step, device),
                                output_bytes=gradient_bytes)
    # Shared CPUs are noisy: more rounds keep the medians of the three implementations comparable.
    benchmark.pedantic(step, rounds=15 if device.type == "cpu" else 50, warmup_rounds=1)
