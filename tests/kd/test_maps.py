"""Jacobian and Hessian maps of crucial layers: finite differences and the exact Hessian diagonal
of a tiny net, per-sample vs per-batch, and the maps' differentiability."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from hyperkd.kd.maps import hessian_diagonal_maps, jacobian_maps, response

LAYERS = ["0", "3"]


def tiny_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(),
                        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 5)).double()
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.train()


def batch(n=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 6, 6, dtype=torch.float64, generator=g), torch.tensor([0, 3, 4, 1, 2][:n])


def responses_at(net, layer, x, y, kind):
    """s_i of every sample with the net in eval mode (the maps' convention)."""
    net.eval()
    try:
        return response(net(x), y, kind)
    finally:
        net.train()


@pytest.mark.parametrize("kind", ["logit", "loss", "logits"])
def test_jacobian_map_matches_finite_differences(kind):
    net, (x, y) = tiny_net(), batch()
    maps = jacobian_maps(net, LAYERS, x, y, response_kind=kind)
    h = 1e-6
    for layer, m in zip(LAYERS, maps):
        w = net.get_submodule(layer).weight
        assert m.shape == (3, w.numel())
        for e in (0, 7, w.numel() - 1):
            with torch.no_grad():
                w.view(-1)[e] += h
                up = responses_at(net, layer, x, y, kind)
                w.view(-1)[e] -= 2 * h
                down = responses_at(net, layer, x, y, kind)
                w.view(-1)[e] += h
            torch.testing.assert_close(m[:, e], (up - down) / (2 * h), rtol=1e-6, atol=1e-8)


def test_per_batch_jacobian_is_the_sum_over_samples():
    net, (x, y) = tiny_net(), batch()
    per_sample = jacobian_maps(net, LAYERS, x, y)
    per_batch = jacobian_maps(net, LAYERS, x, y, per_sample=False)
    for s, b in zip(per_sample, per_batch):
        torch.testing.assert_close(b, s.sum(dim=0, keepdim=True))


def test_maps_leave_the_running_statistics_and_training_mode_alone():
    net, (x, y) = tiny_net(), batch()
    before = net[1].running_mean.clone()
    jacobian_maps(net, LAYERS, x, y)
    hessian_diagonal_maps(net, LAYERS, x, y)
    assert torch.equal(net[1].running_mean, before) and net.training


def layer_hessians(net, layer, x, y, kind):
    """The exact per-sample Hessian of s_i w.r.t. one layer's weights, B×|W|×|W|."""
    w = net.get_submodule(layer).weight.detach()
    return torch.stack([torch.autograd.functional.hessian(
        lambda w_: _response_with(net, layer, w_, x[i:i + 1], y[i:i + 1], kind), w).reshape(w.numel(), -1)
        for i in range(len(x))])


def _response_with(net, layer, w, x, y, kind):
    params = {**dict(net.named_parameters()), f"{layer}.weight": w}
    net.eval()
    try:
        return response(functional_call(net, (params, dict(net.named_buffers())), (x,)), y, kind).sum()
    finally:
        net.train()


@pytest.mark.parametrize("layer", LAYERS)
def test_hutchinson_mean_over_many_probes_approaches_the_exact_diagonal(layer):
    net, (x, y) = tiny_net(), batch(2)
    probes = 300
    (est,) = hessian_diagonal_maps(net, [layer], x, y, probes=probes,
                                   generator=torch.Generator().manual_seed(0))
    H = layer_hessians(net, layer, x, y, "loss")
    exact = torch.diagonal(H, dim1=1, dim2=2)
    # One probe's error at entry e is Σ_{k≠e} H_ek v_k, of variance Σ_{k≠e} H_ek²; the mean of n
    # probes has that over n: allow 5 standard deviations per entry.
    sd = ((H.pow(2).sum(-1) - exact.pow(2)).clamp_min(0) / probes).sqrt()
    assert ((est - exact).abs() <= 5 * sd + 1e-10).all()
    assert exact.abs().max() > 1e-3  # the check is not vacuous


def test_logit_hessian_of_a_relu_layer_is_zero():
    """Why the Hessian map's default response is the loss: after the last nonlinearity that
    depends on it, a logit is linear in the weights of a conv followed by ReLU/pool/linear."""
    net, (x, y) = tiny_net(), batch()
    (m,) = hessian_diagonal_maps(net, ["3"], x, y, response_kind="logit", probes=3)
    assert m.abs().max() < 1e-12


def test_student_maps_are_differentiable():
    net, (x, y) = tiny_net(), batch()
    for maps in (jacobian_maps(net, LAYERS, x, y), hessian_diagonal_maps(net, LAYERS, x, y)):
        loss = sum(m.pow(2).sum() for m in maps)
        grads = torch.autograd.grad(loss, [net[0].weight, net[7].weight])
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("call, message", [
    (lambda n, x, y: jacobian_maps(n, ["9"], x, y), "no weighted module named '9'"),
    (lambda n, x, y: jacobian_maps(n, LAYERS, x, y, response_kind="margin"), "response: expected one of"),
    (lambda n, x, y: hessian_diagonal_maps(n, LAYERS, x, y, probes=0), "probes: expected a positive integer"),
])
def test_bad_arguments_are_named(call, message):
    net, (x, y) = tiny_net(), batch()
    with pytest.raises(ValueError, match=message):
        call(net, x, y)


@pytest.mark.parametrize("spec", ["jsd:map=jacobian", "jsd:map=hessian,probes=2", "jsd:map=jacobian,per=batch"])
def test_jsd_method_on_derivative_maps_trains_the_student(spec):
    from hyperkd.kd import make_method
    student, teacher, (x, y) = tiny_net(), tiny_net(), batch()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    method = make_method(spec).attach(student, teacher, LAYERS).bind(x, x, y)
    total, terms = method.weighted([], [], [1.0, 2.0])
    assert terms.shape == (2,) and (terms > 0).all() and (terms <= 0.6932).all()
    assert torch.isfinite(total)
    (g,) = torch.autograd.grad(total, [student[0].weight])
    assert g.abs().sum() > 0


def test_jsd_method_needs_its_nets():
    from hyperkd.kd import make_method
    with pytest.raises(RuntimeError, match=r"call attach\(student, teacher, layers\)"):
        make_method("jsd:map=jacobian").weighted([], [], None)


@pytest.mark.parametrize("spec, message", [
    ("jsd:map=gradient", "map expects one of attention, jacobian, hessian"),
    ("jsd:per=layer", "per expects one of sample, batch"),
    ("jsd:probes=0", "probes must be a positive integer"),
])
def test_jsd_method_options_are_checked(spec, message):
    from hyperkd.kd import make_method
    with pytest.raises(ValueError, match=message):
        make_method(spec)
