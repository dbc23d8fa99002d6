"""The supernet: only the active path runs and learns, extracted students equal it on their path,
identity/zero only where the shapes allow, and the NAS students by name."""
import random

import pytest
import torch

from hyperkd import models
from hyperkd.gtn.supernet import Supernet, sample_students
from hyperkd.models.nas import NAS_STUDENTS, PRESETS, NasNet, SupernetConfig, make_op

SMALL = PRESETS["small"]


def _randomise(net: torch.nn.Module, seed: int = 0) -> None:
    """Random weights and BN statistics, so that equal outputs do not come from a fresh init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else 0.3 * torch.randn(t.shape, generator=g))


def test_only_the_active_path_gets_gradients():
    net = Supernet(SMALL, num_classes=5)
    spec = net.sample(random.Random(3))
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    for layer, op in zip(net.layers, spec):
        for name, candidate in layer.candidates.items():
            grads = [p.grad for p in candidate.parameters()]
            if name == op:
                assert all(g is not None for g in grads)
            else:
                assert all(g is None for g in grads), f"inactive {name} got a gradient"
    assert all(p.grad is not None for p in net.stem.parameters())


@pytest.mark.parametrize("spec", [NAS_STUDENTS["s_nas_m"], ("k5d6", "identity", "k3d4", "zero", "k5d2", "k3d6")])
def test_extract_gives_the_supernets_logits(spec):
    net = Supernet(SMALL, num_classes=7)
    _randomise(net)
    net.eval().activate(spec)
    student = net.extract(spec).eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(student(x), net(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in net.parameters())
    fresh = net.extract(spec, weights=False).eval()
    assert not torch.allclose(fresh(x), net(x))


def test_identity_and_zero_only_where_shapes_allow():
    config = SupernetConfig(widths=(8, 8, 16, 16), strides=(1, 1, 2, 1), stem=8)
    for i, (c_in, c_out, stride) in enumerate(config.layer_shapes()):
        has = "identity" in config.candidates(i) and "zero" in config.candidates(i)
        assert has == (stride == 1 and c_in == c_out), (i, c_in, c_out, stride)
    assert [("identity" in config.candidates(i)) for i in range(4)] == [True, True, False, True]
    with pytest.raises(ValueError, match="stride 1 and c_in = c_out"):
        make_op("identity", 8, 16, 1)
    with pytest.raises(ValueError, match="layer 2 has no operation 'zero'"):
        NasNet(("k3d2", "k3d2", "zero", "k3d2"), config)


def test_zero_skips_by_default_and_zeros_literally():
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(make_op("zero", 4, 4, 1)(x), x)
    assert torch.equal(make_op("zero", 4, 4, 1, zero="zeros")(x), torch.zeros_like(x))
    assert torch.equal(make_op("identity", 4, 4, 1)(x), x)


def test_depth_and_kernel_of_the_stacks():
    op = make_op("k5d6", 8, 16, 2)
    assert len(op) == 3 and op[0].conv1.kernel_size == (5, 5) and op[0].conv1.stride == (2, 2)
    assert op(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    with pytest.raises(ValueError, match="k<kernel>d<convs>"):
        make_op("res3", 8, 8, 1)


def test_nas_students_by_name():
    names = models.available()
    for name in NAS_STUDENTS:
        assert name in names and f"{name}_small" in names
    small = models.create("s_nas_s_small", num_classes=10)
    teacher = models.create("resnet32", num_classes=10)
    assert models.parameter_count(small) < models.parameter_count(teacher)
    path = sample_students(3, seed=1)
    assert len(set(path)) == 3 and path == sample_students(3, seed=1)
    net = models.create(path[0], num_classes=10)
    assert isinstance(net, NasNet) and net(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    with pytest.raises(ValueError, match="unknown supernet preset 'huge'"):
        models.create("nas_huge:k3d2-k3d2-k3d2-k3d2-k3d2-k3d2")


def test_path_distribution_weights_are_followed():
    net = Supernet(SMALL, num_classes=3)
    net.probs = [[1.0 if op == names[-1] else 0.0 for op in names] for names in net.candidates()]
    rng = random.Random(0)
    assert {net.sample(rng) for _ in range(5)} == {tuple(names[-1] for names in net.candidates())}
