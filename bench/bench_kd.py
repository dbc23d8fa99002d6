"""Forward+backward of each fused layer-wise KD op, through the registry
(``hyperkd.kd.layerwise_loss``, teacher summaries included), against its eager reference in
``hyperkd/reference/`` and torch.compile of that reference, on the conv outputs of CIFAR ResNet-20
and VGG-19-bn. Run through ``hyperkd bench --suite kd`` (``--full``: both networks, B = 16/64/128).

RKD also gets a peer row, torchdistill 1.1.5's ``RKDLoss`` (the ``bench`` extra), when it is
installed: its distance is Gram-based like ours, its angle forms the B×B×D difference tensor.
"""
import time

import pytest
import torch

import hyperkd.kd as kd
from bench.measure import peak_extra_bytes
from bench.workloads import features
from hyperkd import reference as R

IMPLEMENTATIONS = ("fused", "eager", "compiled")
PEERS = {"rkd-d": "torchdistill", "rkd-a": "torchdistill"}
# The naive RKD references (and torchdistill's angle) materialise a B×B×D tensor per layer and
# keep them all for backward. Above these sums (angle: several such tensors per layer) they need
# many GiB and minutes per step, so those rows are skipped and the fused op runs alone.
NAIVE_RKD_LIMIT_BYTES = {"rkd-d": 4 << 30, "rkd-a": 1 << 30}
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
    return [(n, b, op, impl) for n in nets for b in batches for op in REFERENCES
            for impl in IMPLEMENTATIONS + ((PEERS[op],) if op in PEERS else ())]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        full = metafunc.config.getoption("--full")
        metafunc.parametrize("case", cases(full), ids=["-".join([n, f"B{b}", op, impl])
                                                       for n, b, op, impl in cases(full)])


def torchdistill_loss(op):
    mid_level = pytest.importorskip("torchdistill.losses.mid_level", reason="the bench extra is not installed")
    rkd = mid_level.RKDLoss(None, None, dist_factor=float(op == "rkd-d"), angle_factor=float(op == "rkd-a"),
                            reduction="mean")

    def loss(student, teacher):
        return sum(rkd.compute_rkd_distance_loss(t.flatten(1), s.flatten(1))
                   + rkd.compute_rkd_angle_loss(t.flatten(1), s.flatten(1))
                   for s, t in zip(student, teacher))
    return loss


def loss_fn(op, impl):
    if impl == "fused":
        return lambda s, t: kd.layerwise_loss(op, s, t)
    if impl == "torchdistill":
        return torchdistill_loss(op)
    return REFERENCES[op] if impl == "eager" else torch.compile(REFERENCES[op], dynamic=False)


def naive_rkd_bytes(student) -> int:
    return sum(f.shape[0] ** 2 * f[0].numel() * f.element_size() for f in student)


def test_kd_op(benchmark, device, case):
    network, batch, op, impl = case
    student, teacher = features(network, batch, device)
    naive = impl in ("eager", "compiled") or (impl == "torchdistill" and op == "rkd-a")
    naive_bytes = naive_rkd_bytes(student)
    if naive and naive_bytes > NAIVE_RKD_LIMIT_BYTES.get(op, float("inf")):
        pytest.skip(f"the naive formulation's B×B×D tensors take {naive_bytes / 2**30:.1f} GiB "
                    f"over the layers at this batch")
    fn = loss_fn(op, impl)

    def step():
        grads = torch.autograd.grad(fn(student, teacher), student)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return grads

    step()  # compile outside the timed region
    start = time.perf_counter()
    step()
    slow = time.perf_counter() - start > 1.0  # the naive references: seconds per step
    benchmark.extra_info.update(network=network, batch=batch, kind=op, impl=impl,
                                peak_extra_bytes=peak_extra_bytes(step, device),
                                output_bytes=sum(s.numel() * s.element_size() for s in student))
    rounds = 3 if slow else 15 if device.type == "cpu" else 50
    benchmark.pedantic(step, rounds=rounds)
