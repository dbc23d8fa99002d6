"""The fused output-layer optimizer step: op parity, trajectory parity with the unfused path,
stochastic rounding, and the errors for what it cannot support."""
import copy

import pytest
import torch
import torch.nn.functional as F

from hyperkd.hyper import hypernetize
from hyperkd.hyper.optim import HyperOptimizer
from hyperkd.kernels import hyper_fused_step as triton_fs
from hyperkd.reference.hyper_generate import ADAM, ADAMW, SGD, output_layer_step
from tests.hyper.nets import NETS
from tests.tolerances import assert_close

STEPS = 20
# (algorithm, beta1, weight decay): SGD with momentum, Adam with L2, AdamW decoupled.
CASES = [(SGD, 0.9, 1e-3), (SGD, 0.0, 0.0), (ADAM, 0.9, 1e-3), (ADAMW, 0.9, 1e-2)]


def step_inputs(P=70, d=9, B=3):
    return torch.randn(P, d), torch.randn(B, P), torch.randn(B, d)


def run_steps(update, W, dtheta, z, algorithm, beta1, wd, steps=3):
    W = W.clone()
    s1, s2 = torch.zeros_like(W), torch.zeros_like(W)
    for t in range(1, steps + 1):
        update(W, s1, s2, dtheta * t, z, algorithm, 1e-2, beta1, 0.999, 1e-8, wd, t)
    return W, s1, s2


@pytest.mark.parametrize("algorithm, beta1, wd", CASES)
def test_cpu_op_matches_reference(algorithm, beta1, wd):
    W, dtheta, z = step_inputs()
    fused = run_steps(lambda *a: torch.ops.hyperkd.hyper_fused_step_(*a, 0), W, dtheta, z, algorithm, beta1, wd)
    ref = run_steps(output_layer_step, W, dtheta, z, algorithm, beta1, wd)
    for name, f, r in zip(("W", "state1", "state2"), fused, ref):
        assert_close(f, r, torch.float32, msg=name)


@pytest.mark.interpret
@pytest.mark.parametrize("algorithm, beta1, wd", [CASES[0], CASES[3]])
def test_triton_step_matches_reference(algorithm, beta1, wd):
    W, dtheta, z = step_inputs()
    fused = run_steps(lambda *a: triton_fs.hyper_fused_step_(*a, 0), W, dtheta, z, algorithm, beta1, wd)
    ref = run_steps(output_layer_step, W, dtheta, z, algorithm, beta1, wd)
    for name, f, r in zip(("W", "state1", "state2"), fused, ref):
        assert_close(f, r, torch.float32, msg=name)


def test_opcheck_of_the_mutating_step():
    W, dtheta, z = step_inputs()
    s1, s2 = torch.zeros_like(W), torch.zeros_like(W)
    torch.library.opcheck(torch.ops.hyperkd.hyper_fused_step_.default,
                          (W, s1, s2, dtheta, z, ADAM, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, 7),
                          test_utils=("test_schema", "test_faketensor"))


def assert_rounded_stochastically(moved):
    """``moved`` holds bf16 roundings of 1 − 1e-3 (0.256 ulp below 1.0: round-to-nearest loses it):
    each one of its two bf16 neighbours, their mean 1 − 1e-3 ± 5σ, σ = 2^-8·sqrt(p(1−p)/rows)
    with p = 0.256; round-to-nearest's bias of 1e-3 must lie outside that bound (asserted, so the
    check has power)."""
    moved, exact = moved.float(), 1 - 1e-3
    assert set(moved.tolist()) <= {1.0, 1.0 - 2 ** -8}
    bound = 5 * 2 ** -8 * (0.256 * 0.744 / len(moved)) ** 0.5
    assert abs(torch.tensor(exact).bfloat16().item() - exact) > bound, "round-to-nearest would pass too"
    assert abs(moved.mean().item() - exact) < bound


def test_bf16_storage_rounds_stochastically_without_bias():
    rows = 4096
    W = torch.ones(rows, 2, dtype=torch.bfloat16)
    dtheta, z = torch.full((1, rows), 1e-3), torch.tensor([[1.0, 0.0]])
    momentum = torch.zeros(rows, 2, dtype=torch.bfloat16)
    torch.ops.hyperkd.hyper_fused_step_(W, momentum, torch.empty(0), dtheta, z, SGD, 1.0, 0.5, 0.999, 1e-8,
                                        0.0, 1, 123)
    assert_rounded_stochastically(W[:, 0])
    torch.testing.assert_close(W[:, 1], torch.ones(rows, dtype=torch.bfloat16), rtol=0, atol=0)


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


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm, beta1, wd", CASES)
def test_cuda_step_matches_reference(algorithm, beta1, wd):
    W, dtheta, z = step_inputs(P=5000, d=128, B=2)
    fused = run_steps(lambda *a: torch.ops.hyperkd.hyper_fused_step_(*a, 0), W.cuda(), dtheta.cuda(), z.cuda(),
                      algorithm, beta1, wd)
    ref = run_steps(output_layer_step, W, dtheta, z, algorithm, beta1, wd)
    for name, f, r in zip(("W", "state1", "state2"), fused, ref):
        assert_close(f.cpu(), r, torch.float32, msg=name)


@pytest.mark.gpu
def test_cuda_bf16_storage_rounds_stochastically_without_bias():
    W = torch.ones(256, 64, dtype=torch.bfloat16, device="cuda")
    dtheta, z = torch.full((1, 256), 1e-3, device="cuda"), torch.zeros(1, 64, device="cuda")
    z[0, 0] = 1.0
    empty = torch.empty(0, device="cuda")
    torch.ops.hyperkd.hyper_fused_step_(W, empty, empty, dtheta, z, SGD, 1.0, 0.0, 0.999, 1e-8, 0.0, 1, 123)
    assert_rounded_stochastically(W[:, 0])
