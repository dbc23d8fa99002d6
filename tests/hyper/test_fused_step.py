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


def test_bf16_storage_rounds_stochastically_without_bias():
    # An update of 1e-3 is 0.128 ulp of bf16 at 1.0: round-to-nearest would lose it entirely.
    W = torch.ones(64, 64, dtype=torch.bfloat16)
    dtheta, z = torch.full((1, 64), 1e-3), torch.zeros(1, 64)
    z[0, 0] = 1.0
    momentum = torch.zeros(64, 64, dtype=torch.bfloat16)
    torch.ops.hyperkd.hyper_fused_step_(W, momentum, torch.empty(0), dtheta, z, SGD, 1.0, 0.5, 0.999, 1e-8,
                                        0.0, 1, 123)
    moved = W[:, 0].float()
    assert set(moved.tolist()) <= {1.0, 1.0 - 2 ** -8}  # the two bf16 neighbours of 1 − 1e-3
    # The mean of 64 roundings is 1 − 1e-3 ± 5σ, σ = 2^-8·sqrt(p(1−p)/64) with p = 0.256.
    assert abs(moved.mean().item() - (1 - 1e-3)) < 5 * 2 ** -8 * (0.256 * 0.744 / 64) ** 0.5
    torch.testing.assert_close(W[:, 1:].float(), torch.ones(64, 63), rtol=0, atol=0)


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
@pytest.mark.parametrize("net, algorithm, kwargs", [
    ("resnet", "sgd", dict(momentum=0.9, weight_decay=1e-3)),
    ("vgg", "sgd", dict(momentum=0.9)),
    ("vgg", "adam", dict(weight_decay=1e-3)),
    ("vgg", "adamw", dict(weight_decay=1e-2)),
])
def test_fused_trajectory_matches_unfused_over_20_steps(net, algorithm, kwargs):
    base = hypernetize(NETS[net](), hidden=(8, 16))
    fused_model, eager_model = copy.deepcopy(base), copy.deepcopy(base)
    fused_opt = HyperOptimizer(fused_model, algorithm, lr=1e-2, fused=True, **kwargs)
    eager_opt = HyperOptimizer(eager_model, algorithm, lr=1e-2, fused=False, **kwargs)
    data = batches()
    fused_losses, eager_losses = train(fused_model, fused_opt, data), train(eager_model, eager_opt, data)
    assert fused_model.hypernet.W.grad is None  # no P×d gradient ever existed
    assert eager_model.hypernet.W.grad is not None
    # The two paths sum dW = dθᵀ·z in different orders; fp32 rounding then accumulates over the steps.
    assert_close(fused_losses, eager_losses, torch.float32, scale=STEPS)
    assert (fused_model.hypernet.W - base.hypernet.W).abs().max() > 1e-3  # W did train
    eager = dict(eager_model.named_parameters())
    for name, p in fused_model.named_parameters():
        assert_close(p, eager[name], torch.float32, scale=STEPS, msg=name)


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
    expected = train(model, opt, data[2:])
    other, other_opt = fused_model()
    other.load_state_dict(saved_model)
    other_opt.load_state_dict(saved_opt)
    torch.testing.assert_close(train(other, other_opt, data[2:]), expected, rtol=0, atol=0)


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
    moved = W[:, 0].float()
    # 1 − 1e-3 lies 0.128 of the way from 1 down to 1 − 2^-8; σ of the mean of 256 roundings.
    assert abs(moved.mean().item() - (1 - 1e-3)) < 5 * 2 ** -8 * (0.256 * 0.744 / 256) ** 0.5
