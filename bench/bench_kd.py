"""Forward+backward of each fused layer-wise KD op, through the registry
(``hyperkd.kd.layerwise_loss``, teacher summaries included), against its eager reference in
``hyperkd/reference/`` and torch.compile of that reference, on the conv outputs of CIFAR ResNet-20
and VGG-19-bn. Run through ``hyperkd bench --suite kd`` (``--full``: both networks, B = 16/64/128).
"""
import pytest
import torch

import hyperkd.kd as kd
from bench.measure import peak_extra_bytes
from bench.workloads import features
from hyperkd import reference as R

IMPLEMENTATIONS = ("fused", "eager", "compiled")
REFERENCES = {
    "at1:p=2": lambda s, t: R.attention_transfer_loss(s, t, kind=1, p=2.0),
    "ab": lambda s, t: R.activation_boundary_loss(s, t, margin=1.0),
    "sp": lambda s, t: R.similarity_preserving_losses(s, t).sum(),
    "rkd-d": lambda s, t: R.rkd_losses(s, t, 1.0, 0.0).sum(),
    "rkd-a": lambda s, t: R.rkd_losses(s, t, 0.0, 1.0).sum(),
    "cwd": lambda s, t: R.cwd_losses(s, t, 4.0).sum(),
    "fitnets": lambda s, t: R.fitnets_losses(s, t).sum(),
}


def cases(full):
    nets = ("resnet20", "vgg19_bn") if full else ("resnet20",)
    batches = (16, 64, 128) if full else (64,)
    return [(n, b, op) for n in nets for b in batches for op in REFERENCES]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        metafunc.parametrize("case", cases(full), ids=[f"{n}-B{b}-{op}" for n, b, op in cases(full)])


def loss_fn(op, impl):
    if impl == "fused":
        return lambda s, t: kd.layerwise_loss(op, s, t)
    return REFERENCES[op] if impl == "eager" else torch.compile(REFERENCES[op], dynamic=False)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_kd_op(benchmark, device, case, impl):
    network, batch, op = case
    if op == "rkd-a" and impl != "fused" and batch > 32:
        pytest.skip("the naive B×B×D angle tensor of the reference needs > 4 GiB at this batch")
    student, teacher = features(network, batch, device)
    fn = loss_fn(op, impl)

    def step():
        grads = torch.autograd.grad(fn(student, teacher), student)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return grads

    step()  # compile outside the timed region
    benchmark.extra_info.update(network=network, batch=batch, kind=op, impl=impl,
                                peak_extra_bytes=peak_extra_bytes(step, device),
                                output_bytes=sum(s.numel() * s.element_size() for s in student))
    benchmark.pedantic(step, rounds=15 if device.type == "cpu" else 50, warmup_rounds=1)
