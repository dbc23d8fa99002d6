"""DKD against its eager reference: values and gradients, the warm-up, and its registry entry."""
import pytest
import torch

from hyperkd.kd import make_method
from hyperkd.kd.dkd import DecoupledKD
from hyperkd.kd.layerkd import LayerKD
from hyperkd.reference.dkd import dkd_loss


@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_dkd_matches_reference(scale):
    torch.manual_seed(0)
    s = (scale * torch.randn(5, 11, dtype=torch.float64)).requires_grad_()
    t = scale * torch.randn(5, 11, dtype=torch.float64)
    y = torch.randint(0, 11, (5,))
    method = make_method("dkd:alpha=0.5,beta=2,T=3")
    method.bind_batch(y)
    got = method.layer_losses([s], [t])[0]
    want = dkd_loss(s, t, y, alpha=0.5, beta=2.0, T=3.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g_got, = torch.autograd.grad(got, s)
    g_want, = torch.autograd.grad(want, s)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: method.layer_losses([z], [t])[0], (s,))


def test_dkd_fp32_matches_fp64_reference():
    torch.manual_seed(1)
    s, t, y = torch.randn(8, 100), torch.randn(8, 100), torch.randint(0, 100, (8,))
    method = make_method("dkd")
    method.bind_batch(y)
    # fp32 softmax over 100 classes: relative error ~1e-6 per term.
    torch.testing.assert_close(method.layer_losses([s], [t])[0].double(), dkd_loss(s.double(), t.double(), y),
                               rtol=1e-5, atol=1e-6)


def test_dkd_defaults_and_warmup():
    method = make_method("dkd")
    assert isinstance(method, DecoupledKD)
    assert (method.alpha, method.beta, method.T, method.warmup) == (1.0, 8.0, 4.0, 20.0)
    assert method.feature_rank == 2 and method.default_tap == "logits" and method.needs_batch
    assert [method.warmup_factor(e) for e in (0, 9, 19, 50)] == [0.05, 0.5, 1.0, 1.0]
    s, t, y = torch.randn(4, 6), torch.randn(4, 6), torch.randint(0, 6, (4,))
    method.bind_batch(y)
    total, raw = method.weighted([s], [t], None)
    torch.testing.assert_close(total, raw.sum())


def test_dkd_warmup_ramps_the_logged_lambdas():
    from torch import nn

    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    layerkd = LayerKD("dkd:warmup=4", net, net)
    assert layerkd.lambdas(0, 10) == [0.25] and layerkd.lambdas(1, 10) == [0.5] and layerkd.lambdas(7, 10) == [1.0]


def test_dkd_needs_labels_and_equal_shapes():
    method = make_method("dkd")
    with pytest.raises(ValueError, match="bind_batch"):
        method.layer_losses([torch.randn(2, 3)], [torch.randn(2, 3)])
    method.bind_batch(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="B×K logits"):
        method.layer_losses([torch.randn(2, 3)], [torch.randn(2, 4)])
    with pytest.raises(ValueError, match="beta must be >= 0"):
        make_method("dkd:beta=-1")
