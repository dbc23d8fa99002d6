"""Fused JSD map loss (fwd+bwd) against the eager reference and torch.compile of it, and the cost
of a distillation step with each map. Run through ``hyperkd bench --suite jsd_map``.

Loss cases: the crucial layers of ResNet-18 → ResNet-10 (the stem and the first conv of stages
2–4: 64×32², 128×16², 256×8², 512×4²) and every conv output of ResNet-20, B = 64 and 128, with the
teacher's distributions computed once outside the step, as a training loop does after the
teacher's forward. Step cases: one SGD step of a quarter-width ResNet-10 distilled from a
quarter-width ResNet-18 at B = 32 with CE alone, and with the JSD loss on attention, Jacobian and
Hessian maps of the four crucial layers.
"""
import pytest
import torch

from bench.measure import peak_extra_bytes
from bench.workloads import RESNET20
from hyperkd import models
from hyperkd.kd import make_method
from hyperkd.kd.crucial import crucial_layers
from hyperkd.kd.taps import FeatureTaps
from hyperkd.ops import jsd_map as ops
from hyperkd.reference import jsd_map as reference

IMPLEMENTATIONS = ("fused", "eager", "compiled")
RESNET18_CRUCIAL = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
LAYER_LISTS = {"resnet18-crucial": RESNET18_CRUCIAL, "resnet20-all": RESNET20}
_compiled = torch.compile(reference.jsd_map_loss, dynamic=False)


def maps(layers, batch, device):
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(batch, *s, generator=gen).to(device).requires_grad_() for s in layers]
    teacher = [torch.randn(batch, *s, generator=gen).to(device) for s in layers]
    return student, ops.jsd_map_teacher_summary(teacher)


def loss_cases(full):
    batches = (64, 128)
    return [(n, b) for n in LAYER_LISTS for b in batches]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = loss_cases(metafunc.config.getoption("--full"))
        metafunc.parametrize("case", cases, ids=[f"{n}-B{b}" for n, b in cases])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_jsd_map_loss(benchmark, device, case, impl):
    network, batch = case
    student, summaries = maps(LAYER_LISTS[network], batch, device)
    if impl == "fused":
        fn = lambda: ops.jsd_map_loss(student, summaries, teacher_summarised=True)
    else:
        ref = reference.jsd_map_loss if impl == "eager" else _compiled
        fn = lambda: ref(student, summaries, teacher_is_summary=True)

    def step():
        grads = torch.autograd.grad(fn(), student)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return grads

    step()  # compile outside the timed region
    benchmark.extra_info.update(network=network, batch=batch, kind="JSD map", impl=impl,
                                peak_extra_bytes=peak_extra_bytes(step, device),
                                output_bytes=sum(s.numel() * s.element_size() for s in student))
    benchmark.pedantic(step, rounds=15 if device.type == "cpu" else 50, warmup_rounds=1)


STEP_KINDS = ("ce", "attention", "jacobian", "hessian")


@pytest.mark.parametrize("kind", STEP_KINDS)
def test_distillation_step_cost(benchmark, device, kind):
    torch.manual_seed(0)
    student = models.create("resnet10_x0_25", num_classes=10).to(device)
    teacher = models.create("resnet18_x0_25", num_classes=10).to(device).eval()
    pairs = crucial_layers(student, teacher)
    s_layers, t_layers = [s for s, _ in pairs], [t for _, t in pairs]
    x = torch.randn(32, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (32,), device=device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    method = None if kind == "ce" else make_method(f"jsd:map={kind}").attach(student, teacher, s_layers, t_layers)
    s_taps = FeatureTaps(student, s_layers, "student") if method else None
    t_taps = FeatureTaps(teacher, t_layers, "teacher", keep=method.summarise) if method else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        if method is not None:
            method.bind(x, x, y)
            with torch.no_grad(), t_taps.capture() as t:
                teacher(x)
            with s_taps.capture() as s:
                logits = student(x)
            kd, _ = method.weighted(s.values(), t.values(), None)
            loss = torch.nn.functional.cross_entropy(logits, y) + kd
        else:
            loss = torch.nn.functional.cross_entropy(student(x), y)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    benchmark.extra_info.update(network="resnet18_x0_25->resnet10_x0_25", batch=32, kind=f"step {kind}",
                                impl="eager", peak_extra_bytes=peak_extra_bytes(step, device))
    benchmark.pedantic(step, rounds=5 if device.type == "cpu" else 20, warmup_rounds=1)
