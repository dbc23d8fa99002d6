"""The fused output-layer optimizer step through HyperOptimizer: trajectory parity with the unfused
path, bf16 storage, state round trip, and the errors for what it cannot support. The op itself:
``tests/ops/test_hyper_fused_step.py``."""
import copy

import pytest
import torch
import torch.nn.functional as F

from hyperkd.hyper import hypernetize
from hyperkd.hyper.optim import HyperOptimizer
from tests.hyper.nets import NETS
from tests.tolerances import assert_close

STEPS = 20


def train(model, optimizer, data):
    losses = []
    for x, y, gamma in data:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x, gamma), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def batches(steps=STEPS, batch=4, groups=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 5, (batch,), generator=g),
             torch.rand(groups, 1, generator=g)) for _ in range(steps)]


# Adam on the ResNet-style net is left out: its conv1 bias feeds a BatchNorm, so its exact gradient
# is 0 and Adam normalises pure rounding noise into ±lr steps that the two paths draw differently.
# One γ per step (groups=1) is the case where θ0's gradient is dθ itself (a view of it).
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("net, algorithm, kwargs", [
    ("resnet", "sgd", dict(momentum=0.9, weight_decay=1e-3)),
    ("vgg", "sgd", dict(momentum=0.9)),
    ("vgg", "adam", dict(weight_decay=1e-3)),
    ("vgg", "adamw", dict(weight_decay=1e-2)),
])
def test_fused_trajectory_matches_unfused_over_20_steps(net, algorithm, kwargs, groups):
    base = hypernetize(NETS[net](), hidden=(8, 16))
    fused_model, eager_model = copy.deepcopy(base), copy.deepcopy(base)
    fused_opt = HyperOptimizer(fused_model, algorithm, lr=1e-2, fused=True, **kwargs)
    eager_opt = HyperOptimizer(eager_model, algorithm, lr=1e-2, fused=False, **kwargs)
    data = batches(groups=groups)
    fused_losses, eager_losses = train(fused_model, fused_opt, data), train(eager_model, eager_opt, data)
    assert fused_model.hypernet.W.grad is None  # no P×d gradient ever existed
    assert eager_model.hypernet.W.grad is not None
    # θ0, the output layer's bias, is an ordinary parameter on both paths.
    assert fused_model.hypernet.theta0.grad is not None and eager_model.hypernet.theta0.grad is not None
    # The two paths sum dW = dθᵀ·z in different orders; fp32 rounding then accumulates over the steps.
    assert_close(fused_losses, eager_losses, torch.float32, scale=STEPS)
    assert (fused_model.hypernet.W - base.hypernet.W).abs().max() > 1e-3  # W did train
    assert (fused_model.hypernet.theta0 - base.hypernet.theta0).abs().max() > 1e-3  # θ0 too
    eager = dict(eager_model.named_parameters())
    for name, p in fused_model.named_parameters():
        assert_close(p, eager[name], torch.float32, scale=STEPS, msg=name)
    # θ0's own momentum / Adam moments, as every other parameter's: the same slots, the same values
    # (the unfused optimizer has W last, the fused one does not have it).
    fused_params, eager_params = fused_opt.param_groups[0]["params"], eager_opt.param_groups[0]["params"]
    assert len(eager_params) == len(fused_params) + 1
    for f, e in zip(fused_params, eager_params):
        fused_state, eager_state = fused_opt.inner.state[f], eager_opt.inner.state[e]
        assert fused_state.keys() == eager_state.keys()
        for key in fused_state:
            assert_close(fused_state[key], eager_state[key], torch.float32, scale=STEPS, msg=key)


@pytest.mark.parametrize("groups", [1, 2])
def test_theta0_steps_once_with_the_gamma_sum_of_dtheta(groups):
    # One base vector: θ0 moves at the learning rate (not twice it, as a bias b beside θ0 with the
    # same gradient would make it) and its weight decay acts once.
    model = hypernetize(NETS["vgg"](), hidden=(8, 16))
    opt = HyperOptimizer(model, "sgd", lr=0.1, weight_decay=0.01)
    hn = model.hypernet
    theta0 = hn.theta0.detach().clone()
    x, y, gamma = batches(steps=1, groups=groups)[0]
    weights = model.generate(gamma)
    for w in weights:
        w.retain_grad()
    logits = torch.cat([torch.func.functional_call(model.primary, {n: w[g] for n, w in zip(model.plan.names, weights)},
                                                   (xg,)) for g, xg in enumerate(x.chunk(groups))])
    F.cross_entropy(logits, y).backward()
    dtheta_sum = torch.cat([w.grad.sum(0).reshape(-1) for w in weights])
    torch.testing.assert_close(hn.theta0.grad, dtheta_sum, rtol=0, atol=0)
    opt.step()
    torch.testing.assert_close(hn.theta0, theta0 - 0.1 * (dtheta_sum + 0.01 * theta0), rtol=1e-6, atol=1e-7)
    # The primary's own copies are views of θ0 and follow it.
    conv = model.primary[0].weight
    assert conv.untyped_storage().data_ptr() == hn.theta0.untyped_storage().data_ptr()


def test_a_later_unfused_optimizer_gives_w_back_to_autograd():
    model, _ = fused_model()
    assert not model.hypernet.W.requires_grad
    opt = HyperOptimizer(model, "sgd", lr=1e-2, fused=False)
    assert model.hypernet.W.requires_grad and model.hypernet.fused_step is None
    assert any(p is model.hypernet.W for p in opt.param_groups[0]["params"])
    model(torch.randn(2, 3, 8, 8), 0.3).sum().backward()
    assert model.hypernet.W.grad is not None
    HyperOptimizer(model, "sgd", lr=1e-2)  # fused again: off autograd again
    assert not model.hypernet.W.requires_grad


def test_fused_with_bf16_weights_and_state_trains():
    model = hypernetize(NETS["vgg"](), hidden=(8, 16), weight_dtype=torch.bfloat16)
    opt = HyperOptimizer(model, "adamw", lr=1e-2, state_dtype=torch.bfloat16)
    before = model.hypernet.W.detach().clone()
    losses = train(model, opt, batches(steps=3))
    assert torch.isfinite(losses).all()
    assert model.hypernet.W.dtype == torch.bfloat16
    assert all(s.dtype == torch.bfloat16 for s in model.hypernet.fused_step.state)
    assert (model.hypernet.W.float() - before.float()).abs().max() > 1e-3


def fused_model():
    model = hypernetize(NETS["vgg"](), hidden=(8, 16))
    return model, HyperOptimizer(model, "sgd", lr=1e-2, momentum=0.9)


def test_gradient_accumulation_raises():
    model, opt = fused_model()
    x = torch.randn(2, 3, 8, 8)
    model(x, 0.3).sum().backward()
    with pytest.raises(RuntimeError, match="gradient accumulation.*fused=False"):
        model(x, 0.3).sum().backward()


def test_second_backward_raises():
    model, opt = fused_model()
    loss = model(torch.randn(2, 3, 8, 8), 0.3).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward.*fused=False"):
        loss.backward()


def test_global_clipping_raises_when_fused_and_works_unfused():
    model, opt = fused_model()
    model(torch.randn(2, 3, 8, 8), 0.3).sum().backward()
    with pytest.raises(RuntimeError, match="global gradient clipping.*fused=False"):
        opt.clip_grad_norm_(1.0)
    eager = hypernetize(NETS["vgg"](), hidden=(8, 16))
    eager_opt = HyperOptimizer(eager, "sgd", lr=1e-2, fused=False)
    eager(torch.randn(2, 3, 8, 8), 0.3).sum().backward()
    assert eager_opt.clip_grad_norm_(1e-3) > 1e-3
    total = torch.stack([p.grad.norm() for p in eager.parameters() if p.grad is not None]).norm()
    assert total == pytest.approx(1e-3, rel=1e-4)


def test_torch_clip_grad_norm_when_fused_leaves_out_w():
    # It cannot raise: fused, W holds no .grad, so it sees and clips only the others.
    base = hypernetize(NETS["vgg"](), hidden=(8, 16))
    fused, eager = copy.deepcopy(base), copy.deepcopy(base)
    fused_opt = HyperOptimizer(fused, "sgd", lr=0.1, fused=True)
    HyperOptimizer(eager, "sgd", lr=0.1, fused=False)
    x, y, gamma = batches(steps=1, groups=1)[0]
    for model in (fused, eager):
        F.cross_entropy(model(x, gamma), y).backward()
    assert torch.equal(fused.hypernet.W, base.hypernet.W)  # W steps in opt.step(), from its factors
    grads = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
    full = torch.stack([g.norm() for g in grads.values()]).norm()
    rest = torch.stack([g.norm() for n, g in grads.items() if n != "hypernet.W"]).norm()
    norm = torch.nn.utils.clip_grad_norm_(fused.parameters(), max_norm=1e-3)
    torch.testing.assert_close(norm, rest, rtol=1e-5, atol=0)
    assert norm < 0.9 * full
    # θ0 steps with its own gradient, clipped with the others.
    theta0_grad, theta0 = fused.hypernet.theta0.grad.clone(), fused.hypernet.theta0.detach().clone()
    assert theta0_grad.norm() <= 1e-3 * (1 + 1e-5)
    fused_opt.step()
    torch.testing.assert_close(fused.hypernet.theta0, theta0 - 0.1 * theta0_grad, rtol=0, atol=1e-7)
    # W's step used its factors as backward left them: unclipped, though θ0's gradient (for one γ a
    # view of the same dθ) was clipped in place; the unfused twin's W takes that unclipped step.
    eager.hypernet.W.data.sub_(0.1 * eager.hypernet.W.grad)
    assert_close(fused.hypernet.W, eager.hypernet.W, torch.float32)


def test_bad_optimizer_arguments_name_the_argument():
    model = hypernetize(NETS["vgg"](), hidden=(8, 16))
    with pytest.raises(ValueError, match="algorithm: expected one of"):
        HyperOptimizer(model, "lamb")
    with pytest.raises(ValueError, match="state_dtype: bf16 optimizer state is available with fused=True"):
        HyperOptimizer(model, "adam", state_dtype=torch.bfloat16, fused=False)
    with pytest.raises(TypeError, match="model: expected a HyperNetized model"):
        HyperOptimizer(model.primary)
    with pytest.raises(TypeError, match="scaler: expected a torch.amp.GradScaler or None, got float"):
        HyperOptimizer(model, scaler=2.0 ** 16)
    bf16 = hypernetize(NETS["vgg"](), hidden=(8, 16), weight_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="fused: a bf16 W is updated only by the fused step"):
        HyperOptimizer(bf16, fused=False)


def test_optimizer_state_dict_round_trip_continues_the_same_trajectory():
    model, opt = fused_model()
    data = batches(steps=4)
    train(model, opt, data[:2])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert "hypernet.theta0" in saved_model
    theta0_slot = [p is model.hypernet.theta0 for p in opt.param_groups[0]["params"]].index(True)
    assert "momentum_buffer" in saved_opt["inner"]["state"][theta0_slot]  # θ0's own momentum
    expected = train(model, opt, data[2:])
    other, other_opt = fused_model()
    other.load_state_dict(saved_model)
    other_opt.load_state_dict(saved_opt)
    torch.testing.assert_close(train(other, other_opt, data[2:]), expected, rtol=0, atol=0)
    torch.testing.assert_close(other.hypernet.theta0, model.hypernet.theta0, rtol=0, atol=0)
