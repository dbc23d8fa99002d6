"""fp16 loss scaling with HyperOptimizer: the fused step unscales dθ itself (it updates W inside
backward, before ``GradScaler.step``) and skips W's update on an inf/NaN gradient."""
import copy

import pytest
import torch
import torch.nn.functional as F

from hyperkd.hyper import hypernetize
from hyperkd.hyper.optim import HyperOptimizer
from tests.hyper.nets import NETS
from tests.hyper.test_fused_step import batches
from tests.tolerances import assert_close

STEPS = 4
SCALE = 2.0 ** 12


def base_model():
    return hypernetize(NETS["vgg"](), hidden=(8, 16))


def train(model, algorithm, fused, scaler=None, autocast=False, set_to_none=True, groups=2, **kwargs):
    """``STEPS`` steps; with ``scaler`` the loss is scaled and the step goes through it."""
    opt = HyperOptimizer(model, algorithm, lr=1e-2, fused=fused, scaler=scaler, **kwargs)
    for x, y, gamma in batches(steps=STEPS, groups=groups):
        opt.zero_grad(set_to_none=set_to_none)
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            loss = F.cross_entropy(model(x, gamma), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return opt


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("algorithm, kwargs", [("sgd", dict(momentum=0.9)), ("adam", dict(weight_decay=1e-3))])
def test_loss_scaled_steps_equal_unscaled_fp32_steps(fused, algorithm, kwargs):
    base = base_model()
    scaled, plain = copy.deepcopy(base), copy.deepcopy(base)
    train(scaled, algorithm, fused, torch.amp.GradScaler("cpu", init_scale=SCALE), **kwargs)
    train(plain, algorithm, fused, **kwargs)
    assert (plain.hypernet.W - base.hypernet.W).abs().max() > 1e-3  # W did train
    # Exact, tolerance 0: scaling the loss by 2^12 scales every fp32 value of backward by exactly
    # 2^12 (rounding commutes with a power of two while nothing overflows or turns subnormal), and
    # unscaling multiplies by 2^-12, again exactly; so both runs see the very same gradients.
    plain_params = dict(plain.named_parameters())
    for name, p in scaled.named_parameters():
        torch.testing.assert_close(p, plain_params[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_theta0_gradient_is_unscaled_once(set_to_none):
    # For one γ θ0's gradient is a view of the factor dθ that W's fused update reads: unscaling
    # θ0's gradient (GradScaler.unscale_) must not unscale W's factor a second time, also when
    # zero_grad keeps the gradient tensors.
    base = base_model()
    scaled, plain = copy.deepcopy(base), copy.deepcopy(base)
    kwargs = dict(momentum=0.9, weight_decay=1e-3, set_to_none=set_to_none, groups=1)
    train(scaled, "sgd", True, torch.amp.GradScaler("cpu", init_scale=SCALE), **kwargs)
    train(plain, "sgd", True, **kwargs)
    assert (plain.hypernet.theta0 - base.hypernet.theta0).abs().max() > 1e-3
    plain_params = dict(plain.named_parameters())
    for name, p in scaled.named_parameters():
        torch.testing.assert_close(p, plain_params[name], rtol=0, atol=0, msg=name)


def test_fp16_autocast_with_loss_scaling_fused_matches_unfused():
    base = base_model()
    fused, unfused = copy.deepcopy(base), copy.deepcopy(base)
    for model, is_fused in ((fused, True), (unfused, False)):
        train(model, "sgd", is_fused, torch.amp.GradScaler("cpu", init_scale=SCALE), autocast=True,
              momentum=0.9)
    assert (fused.hypernet.W - base.hypernet.W).abs().max() > 1e-3
    # The same fp16 forward and backward; the fused step unscales dθ before forming dθᵀ·z, the
    # unfused path unscales W's gradient: an fp32 summation-order difference per step (a later
    # forward could round a 1-ulp difference of W to another fp16 value, hence fp32, not exact).
    unfused_params = dict(unfused.named_parameters())
    for name, p in fused.named_parameters():
        assert_close(p, unfused_params[name], torch.float32, scale=STEPS, msg=name)


def test_an_inf_gradient_skips_the_fused_W_update_and_lowers_the_scale():
    model = base_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    opt = train(model, "adam", True, scaler)
    step = model.hypernet.fused_step
    parameters = lambda: {name: p.detach().clone() for name, p in model.named_parameters()}
    before, state = parameters(), copy.deepcopy(step.state)
    x, y, gamma = batches(steps=1)[0]
    opt.zero_grad()
    logits = model(x, gamma)
    logits.register_hook(lambda g: torch.full_like(g, float("inf")))
    scaler.scale(F.cross_entropy(logits, y)).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == SCALE / 2  # backed off
    for name, value in parameters().items():  # W, its moments and every other parameter untouched
        assert torch.equal(value, before[name]), name
    assert all(torch.equal(a, b) for a, b in zip(step.state, state))
    assert step.step_count == STEPS
    # As torch's Adam, which counted no step either; and the next finite step goes ahead.
    assert all(s["step"] == STEPS for s in opt.inner.state.values())
    opt.zero_grad()
    scaler.scale(F.cross_entropy(model(x, gamma), y)).backward()
    scaler.step(opt)
    scaler.update()
    assert step.step_count == STEPS + 1
    assert not torch.equal(model.hypernet.W, before["hypernet.W"])
