"""Workloads shared by the op-family suites: the layer lists of real networks (the conv output
shapes (C, H, W) on 32×32 CIFAR inputs), their seeded features, and the layer-wise KD loss
benchmark that ``bench_activation_boundary.py``, ``bench_relational.py`` and ``bench_channelwise.py``
parametrise with their own ops.

A layer-wise case is (network, batch, op, implementation): forward+backward of Σ_m L_m over every
conv output, ``fused`` through the registry (``hyperkd.kd.layerwise_loss``, teacher summaries
included), ``eager`` the family's reference in ``hyperkd/reference/`` and ``compiled``
torch.compile of it; other libraries' rows (peers) come from the suite's ``peers``.
"""
import time

import pytest
import torch

RESNET20 = [(16, 32, 32)] * 7 + [(32, 16, 16)] * 6 + [(64, 8, 8)] * 6
VGG19_BN = ([(64, 32, 32)] * 2 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 4 + [(512, 4, 4)] * 4
            + [(512, 2, 2)] * 4)

NETWORKS = {"resnet20": RESNET20, "vgg19_bn": VGG19_BN}
IMPLEMENTATIONS = ("fused", "eager", "compiled")


def features(network: str, batch: int, device: torch.device):
    """Seeded random student features (requiring grad) and teacher features of one network."""
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(batch, *s, generator=gen).to(device).requires_grad_() for s in NETWORKS[network]]
    teacher = [torch.randn(batch, *s, generator=gen).to(device) for s in NETWORKS[network]]
    return student, teacher


def layerwise_cases(ops, peers: dict, full: bool) -> list:
    """(network, batch, op, implementation) of every case: ResNet-20 at B = 64, or with ``full``
    both networks at B = 16/64/128; ``peers`` maps an op to the peer implementations it also gets."""
    nets = tuple(NETWORKS) if full else ("resnet20",)
    batches = (16, 64, 128) if full else (64,)
    return [(n, b, op, impl) for n in nets for b in batches for op in ops
            for impl in IMPLEMENTATIONS + tuple(peers.get(op, ()))]


def parametrize_layerwise(metafunc, ops, peers: dict = None) -> None:
    """``pytest_generate_tests`` of a layer-wise suite: its ``case`` parameter, ids such as
    ``resnet20-B64-ab-fused`` (``-k`` selects by them)."""
    if "case" in metafunc.fixturenames:
        cases = layerwise_cases(ops, peers or {}, metafunc.config.getoption("--full"))
        metafunc.parametrize("case", cases, ids=["-".join([n, f"B{b}", op, impl]) for n, b, op, impl in cases])


def layerwise_loss_fn(op: str, impl: str, references: dict, peers: dict = None):
    """The loss of one implementation: the fused op through the registry, the eager reference,
    torch.compile of it, or a peer (``peers[impl](op)`` builds it)."""
    import hyperkd.kd as kd

    if impl == "fused":
        return lambda s, t: kd.layerwise_loss(op, s, t)
    if impl in ("eager", "compiled"):
        return references[op] if impl == "eager" else torch.compile(references[op], dynamic=False)
    return (peers or {})[impl](op)


def pairwise_tensor_bytes(student) -> int:
    """Bytes of one B×B×D tensor per layer: what a naive pairwise formulation (the RKD references,
    torchdistill's angle) materialises and keeps for backward."""
    return sum(f.shape[0] ** 2 * f[0].numel() * f.element_size() for f in student)


def time_gradient_step(benchmark, device, loss, student, teacher, cpu_rounds: int = 15, **info) -> None:
    """Times forward+backward of ``loss(student, teacher)`` (gradients of ``student``, a tensor or a
    list) with pytest-benchmark, after one untimed step (torch.compile compiles there). Records
    ``info`` (the case), the step's peak extra bytes and the gradients' bytes (``output_bytes``) in
    the benchmark's extra_info. A step over a second (the naive references at large batches) gets 3
    rounds; otherwise ``cpu_rounds`` on the CPU, 50 on a GPU."""
    from bench.measure import peak_extra_bytes

    inputs = student if isinstance(student, (list, tuple)) else [student]

    def step():
        grads = torch.autograd.grad(loss(student, teacher), inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return grads

    step()  # compile outside the timed region
    start = time.perf_counter()
    step()
    slow = time.perf_counter() - start > 1.0
    benchmark.extra_info.update(**info, peak_extra_bytes=peak_extra_bytes(step, device),
                                output_bytes=sum(s.numel() * s.element_size() for s in inputs))
    benchmark.pedantic(step, rounds=3 if slow else cpu_rounds if device.type == "cpu" else 50)


def bench_layerwise_loss(benchmark, device, case, references: dict, peers: dict = None,
                         naive_limits: dict = None) -> None:
    """Times one layer-wise case. ``naive_limits`` maps an op to (bytes, implementations): those
    implementations materialise B×B×D tensors (:func:`pairwise_tensor_bytes`) and are skipped
    above that many bytes, where they need many GiB and minutes per step."""
    network, batch, op, impl = case
    student, teacher = features(network, batch, device)
    limit, naive_impls = (naive_limits or {}).get(op, (float("inf"), ()))
    naive_bytes = pairwise_tensor_bytes(student)
    if impl in naive_impls and naive_bytes > limit:
        pytest.skip(f"the naive formulation's B×B×D tensors take {naive_bytes / 2**30:.1f} GiB "
                    f"over the layers at this batch")
    time_gradient_step(benchmark, device, layerwise_loss_fn(op, impl, references, peers), student, teacher,
                       network=network, batch=batch, kind=op, impl=impl)
