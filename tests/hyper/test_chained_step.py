"""One pass over W per training step: the fused update of step t also generates step t + 1's W·z
(``hyper_fused_step_`` with ``z_next``), and the next forward uses it (``hyper_generate`` with
``carried``). Chained runs must equal unchained ones step by step: bit for bit on the CPU. The ops
themselves: ``tests/ops/test_hyper_fused_step.py``."""
import copy

import pytest
import torch
import torch.nn.functional as F

from hyperkd.hyper import HyperOptimizer, hypernetize
from tests.hyper.nets import NETS
from tests.tolerances import assert_close

STEPS = 12


def data(steps=STEPS, batch=4):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 5, (batch,), generator=g))
            for _ in range(steps)]


def train(model, opt, batches, gamma=None, between=None):
    """The usual loop: forward, zero_grad, backward, step; ``between(t)`` runs after each step."""
    losses = []
    for t, (x, y) in enumerate(batches):
        loss = F.cross_entropy(model(x, gamma), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
        if between is not None:
            between(t)
    return torch.stack(losses)


def pair(net="vgg", algorithm="sgd", weight_dtype=torch.float32, **kwargs):
    base = hypernetize(NETS[net](), hidden=(8, 16), weight_dtype=weight_dtype)
    chained, plain = copy.deepcopy(base), copy.deepcopy(base)
    opts = []
    for model, chain in ((chained, True), (plain, False)):
        torch.manual_seed(0)  # the same stochastic-rounding seed for both
        opts.append(HyperOptimizer(model, algorithm, lr=1e-2, chain=chain, **kwargs))
    return chained, opts[0], plain, opts[1]


def assert_same_run(chained, plain, chained_losses, plain_losses):
    assert torch.equal(chained_losses, plain_losses)
    plain_params = dict(plain.named_parameters())
    for name, p in chained.named_parameters():
        assert torch.equal(p, plain_params[name]), name
    for a, b in zip(chained.hypernet.fused_step.state, plain.hypernet.fused_step.state):
        assert torch.equal(a, b)


@pytest.mark.parametrize("gamma", [None, 0.3], ids=["drawn", "fixed"])
@pytest.mark.parametrize("net, algorithm, kwargs", [
    ("vgg", "sgd", dict(momentum=0.9, weight_decay=1e-3)),
    ("resnet", "adamw", dict(weight_decay=1e-2)),
    ("vgg", "sgd", dict(momentum=0.9, weight_dtype=torch.bfloat16, state_dtype=torch.bfloat16)),
])
def test_chained_steps_equal_the_unchained_sequence_bit_for_bit(net, algorithm, kwargs, gamma):
    chained, chained_opt, plain, plain_opt = pair(net, algorithm, **kwargs)
    batches = data()
    torch.manual_seed(11)
    chained_losses = train(chained, chained_opt, batches, gamma)
    torch.manual_seed(11)
    plain_losses = train(plain, plain_opt, batches, gamma)
    # Every step after the first generated its weights in the previous update's pass over W.
    assert chained_opt.model.hypernet.fused_step.chained == STEPS - 1
    assert plain_opt.model.hypernet.fused_step.chained == 0
    assert_same_run(chained, plain, chained_losses, plain_losses)


def test_the_carried_generation_lives_in_the_steps_dtheta_buffer():
    # The chain costs no memory: every step's update writes W_{t+1}·z_{t+1} over the dθ copy it has
    # just read, one buffer kept for the whole run (memory_estimate counts no separate tensor).
    chained, opt, _, _ = pair()
    fs = opt.model.hypernet.fused_step
    buffers = []
    train(chained, opt, data(), between=lambda t: buffers.append((fs.carried.values.data_ptr(),
                                                                  fs._dtheta_copy.data_ptr())))
    assert len(set(buffers)) == 1
    carried, copy_of_dtheta = buffers[0]
    assert carried == copy_of_dtheta
    assert fs.chained == STEPS - 1


def test_chained_steps_match_the_unfused_step_over_many_steps():
    # Against the ordinary torch optimizer with W's full gradient: the two paths sum dW = dθᵀ·z in
    # different orders, so they agree to fp32 rounding, accumulated over the steps. (The fused
    # kernels store fp32 or bf16 W; fp64 is checked at the op level, by gradcheck.)
    base = hypernetize(NETS["vgg"](), hidden=(8, 16))
    batches = data(steps=30)
    fused, unfused = copy.deepcopy(base), copy.deepcopy(base)
    fused_opt = HyperOptimizer(fused, "sgd", lr=1e-2, momentum=0.9)
    unfused_opt = HyperOptimizer(unfused, "sgd", lr=1e-2, momentum=0.9, fused=False)
    torch.manual_seed(5)
    fused_losses = train(fused, fused_opt, batches)
    torch.manual_seed(5)
    unfused_losses = train(unfused, unfused_opt, batches)
    assert fused_opt.model.hypernet.fused_step.chained == len(batches) - 1
    assert_close(fused_losses, unfused_losses, torch.float32, scale=len(batches))
    unfused_params = dict(unfused.named_parameters())
    for name, p in fused.named_parameters():
        assert_close(p, unfused_params[name], torch.float32, scale=len(batches), msg=name)


GAMMA_SCHEDULE = [0.2, 0.2, 0.7, 0.7, 0.7, 0.1, 0.2, 0.2, 0.7, 0.7, 0.7, 0.1]


# How many of the 12 steps use the previous update's generation: all but the first, less one per
# break: a draw from γ's generator or a loaded state after steps 1, 4, 7, 10; five changes of γ.
# Evaluation (no gradients, γ = 0.5) leaves the chain alone.
@pytest.mark.parametrize("breaker, chained_steps", [("rng", 7), ("load_state_dict", 7), ("eval", 11),
                                                    ("other_gamma", 6)])
def test_whatever_breaks_the_chain_regenerates_and_the_run_stays_the_same(breaker, chained_steps):
    chained, chained_opt, plain, plain_opt = pair(momentum=0.9)
    gammas = GAMMA_SCHEDULE if breaker == "other_gamma" else [None] * STEPS
    x_eval = torch.randn(2, 3, 8, 8)

    def break_chain(model):
        if breaker == "rng":
            torch.rand(3)  # e.g. a data augmentation drawing from γ's generator
        elif breaker == "eval":
            model.eval()
            with torch.no_grad():
                model(x_eval)
            model.train()
        elif breaker == "load_state_dict":
            model.load_state_dict(copy.deepcopy(model.state_dict()))

    def run(model, opt):
        torch.manual_seed(2)
        losses = []
        for t, ((x, y), gamma) in enumerate(zip(data(), gammas)):
            loss = F.cross_entropy(model(x, gamma), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            if t % 3 == 1:
                break_chain(model)
        return torch.stack(losses)

    chained_losses, plain_losses = run(chained, chained_opt), run(plain, plain_opt)
    assert chained_opt.model.hypernet.fused_step.chained == chained_steps
    assert_same_run(chained, plain, chained_losses, plain_losses)


def test_a_skipped_loss_scaled_step_leaves_no_stale_generation():
    base = hypernetize(NETS["vgg"](), hidden=(8, 16))
    batches = data(steps=6)
    runs = []
    for model in (copy.deepcopy(base), copy.deepcopy(base)):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        torch.manual_seed(0)
        opt = HyperOptimizer(model, "sgd", lr=1e-2, momentum=0.9, scaler=scaler, chain=not runs)
        torch.manual_seed(4)
        losses = []
        for t, (x, y) in enumerate(batches):
            logits = model(x)
            if t == 2:  # an overflow: GradScaler skips the whole step, W's update included
                logits.register_hook(lambda g: torch.full_like(g, float("inf")))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.detach())
        runs.append((model, opt, torch.stack(losses)))
    (chained, chained_opt, chained_losses), (plain, _, plain_losses) = runs
    # Step 3 had no generation from step 2 (whose update was skipped): it regenerated.
    assert chained_opt.model.hypernet.fused_step.chained == len(batches) - 2
    assert_same_run(chained, plain, chained_losses, plain_losses)


def test_resume_regenerates_and_continues_bit_for_bit():
    model, opt, _, _ = pair(algorithm="adam")
    batches = data()
    torch.manual_seed(8)
    train(model, opt, batches[:5])
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), torch.get_rng_state()))
    expected = train(model, opt, batches[5:])
    resumed = hypernetize(NETS["vgg"](), hidden=(8, 16))
    resumed_opt = HyperOptimizer(resumed, "adam", lr=1e-2)
    resumed.load_state_dict(saved[0])
    resumed_opt.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    got = train(resumed, resumed_opt, batches[5:])
    assert resumed_opt.model.hypernet.fused_step.chained == len(batches[5:]) - 1  # the first regenerated
    assert torch.equal(got, expected)
    params = dict(model.named_parameters())
    # The primary's own copies of the generated tensors are never read (deepcopy may have cut them
    # loose from θ0): every parameter that is read must be equal.
    generated = {f"primary.{n}" for n in model.plan.names}
    for name, p in resumed.named_parameters():
        if name not in generated:
            assert torch.equal(p, params[name]), name


@pytest.mark.gpu
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_cuda_chained_steps_match_the_unchained_sequence(weight_dtype):
    # Triton: the update's generation and the generation op sum in their own orders, so the runs
    # agree to fp32 rounding; with bf16 W such a difference can tip a stochastic rounding to the
    # other neighbour, so bf16's tolerance.
    base = hypernetize(NETS["vgg"]().cuda(), hidden=(8, 16), weight_dtype=weight_dtype)
    runs = []
    for chain in (True, False):
        model = copy.deepcopy(base)
        torch.manual_seed(0)
        opt = HyperOptimizer(model, "sgd", lr=1e-2, momentum=0.9, chain=chain,
                             state_dtype=torch.bfloat16 if weight_dtype == torch.bfloat16 else torch.float32)
        torch.manual_seed(6)
        losses = train(model, opt, [(x.cuda(), y.cuda()) for x, y in data(steps=6)])
        runs.append((model, opt, losses))
    (chained, chained_opt, chained_losses), (plain, _, plain_losses) = runs
    assert chained_opt.model.hypernet.fused_step.chained == 5
    dtype = weight_dtype  # the tolerance of W's storage
    assert_close(chained_losses.cpu(), plain_losses.cpu(), dtype, scale=6)
    plain_params = dict(plain.named_parameters())
    for name, p in chained.named_parameters():
        assert_close(p.float().cpu(), plain_params[name].float().cpu(), dtype, scale=6, msg=name)
