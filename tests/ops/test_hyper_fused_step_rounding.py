"""bf16 storage of W and of its optimizer state in the fused step rounds stochastically, without
bias: E[stored] = the fp32 value, so updates far below half a bf16 ulp still move W and its
momentum / Adam moments on average.

The reference for every bf16 run is the same kernel with fp32 storage from the same start: both
compute in fp32, and only the store differs.
"""
import math

import pytest
import torch

from hyperkd.kernels import hyper_fused_step as triton_fs
from hyperkd.reference.hyper_generate import ADAM, SGD, output_layer_step

BF16_BITS = -65536  # 0xFFFF0000 as an int32: the bits a bf16 keeps of an fp32
SIGMAS = 5  # the bias bound; the runs are seeded, so this is a margin, not a flake rate
STEP_IMPLS = [pytest.param(torch.ops.hyperkd.hyper_fused_step_, id="cpu"),
              pytest.param(triton_fs.hyper_fused_step_, id="triton", marks=pytest.mark.interpret)]


def bf16_neighbours(x: torch.Tensor):
    """(lo, hi): the bf16 values either side of the fp32 ``x``, lo its truncation toward zero and
    hi the next bf16 away from zero (lo = hi = x where x is a bf16 value)."""
    lo_bits = x.view(torch.int32) & BF16_BITS
    lo = lo_bits.view(torch.float32)
    hi = torch.where(lo == x, lo_bits, lo_bits + (1 << 16)).view(torch.float32)
    return lo, hi


def rounding_sigma(exact: torch.Tensor) -> float:
    """σ of the mean stochastic-rounding error over the elements of ``exact``: element i rounds
    away from zero with probability p_i = (x_i − lo_i)/(hi_i − lo_i), an error of variance
    (hi_i − lo_i)²·p_i(1 − p_i), independently of the others (the noise hashes the index)."""
    lo, hi = (t.double() for t in bf16_neighbours(exact))
    gap = hi - lo
    p = torch.where(gap != 0, (exact.double() - lo) / gap, torch.zeros_like(gap))
    return (gap.square() * p * (1 - p)).sum().sqrt().item() / exact.numel()


def assert_rounded_without_bias(stored: torch.Tensor, exact: torch.Tensor, name: str) -> None:
    """Every stored value is one of the two bf16 neighbours of the fp32 value, and the mean error
    is within SIGMAS·σ of 0, a bound round-to-nearest misses (so the check has power)."""
    lo, hi = bf16_neighbours(exact)
    stored = stored.float()
    assert ((stored == lo) | (stored == hi)).all(), f"{name}: a value outside its two bf16 neighbours"
    sigma = rounding_sigma(exact)
    bias = (stored.double() - exact.double()).mean().item()
    assert abs(bias) <= SIGMAS * sigma, f"{name}: mean error {bias:.3g}, σ {sigma:.3g}"
    nearest = (exact.bfloat16().double() - exact.double()).mean().item()
    assert abs(nearest) > SIGMAS * sigma, f"{name}: round-to-nearest would pass too"


# (algorithm, β1, gradient, state1's start). Every element has the same value, at a fixed fraction
# of the way between two bf16 values: SGD's buffer is 0.5·1 + g = 0.999 and W = 1 − 10^-3·0.999;
# Adam's m = 0.1·0.3 = 0.03 (0.76 of the way up), v = 10^-3·0.3² (0.74) and W ≈ 1 − 10^-3.
ONE_STEP = {"sgd-momentum": (SGD, 0.5, 0.5 - 1e-3, 1.0), "adam": (ADAM, 0.9, 0.3, 0.0)}


def one_step(step_, dtype, algorithm, beta1, grad, start, P=64, d=64):
    """W = 1 and state1 = ``start`` in ``dtype`` after one step with dW = ``grad`` everywhere."""
    W = torch.ones(P, d, dtype=dtype)
    state1 = torch.full((P, d), start, dtype=dtype)
    state2 = torch.zeros(P, d, dtype=dtype) if algorithm != SGD else torch.empty(0)
    dtheta, z = torch.full((1, P), grad), torch.ones(1, d)  # dW = dθᵀ·z = grad in every element
    step_(W, state1, state2, dtheta, z, algorithm, 1e-3, beta1, 0.999, 1e-8, 0.0, 1, 123)
    return {"W": W, "state1": state1, "state2": state2}


@pytest.mark.parametrize("step_", STEP_IMPLS)
@pytest.mark.parametrize("case", sorted(ONE_STEP))
def test_bf16_w_and_state_round_without_bias_in_one_step(step_, case):
    # Under TRITON_INTERPRET the kernel does no bf16 arithmetic: loads widen to fp32 at once, the
    # rounding is integer arithmetic on the fp32 bits, and the final narrowing is exact (the low
    # 16 bits are zero by then). So the interpreter's faulty bf16 arithmetic is not exercised.
    exact = one_step(step_, torch.float32, *ONE_STEP[case])
    stored = one_step(step_, torch.bfloat16, *ONE_STEP[case])
    for name, tensor in stored.items():
        if tensor.numel():
            assert tensor.dtype == torch.bfloat16
            assert_rounded_without_bias(tensor, exact[name], name)


def _state_after(steps, dtype, algorithm, beta1, beta2, grad, P=256, d=64):
    """The state tensors after ``steps`` fused steps with a constant gradient, W in fp32 and lr 0
    (W does not feed back into the state without weight decay, so only the state's rounding acts)."""
    W = torch.zeros(P, d)
    state = [torch.zeros(P, d, dtype=dtype),
             torch.zeros(P, d, dtype=dtype) if algorithm != SGD else torch.empty(0)]
    dtheta, z = torch.full((1, P), grad), torch.ones(1, d)
    for t in range(1, steps + 1):
        # A new seed per step, as HyperOptimizer passes (its seed + the step count).
        torch.ops.hyperkd.hyper_fused_step_(W, *state, dtheta, z, algorithm, 0.0, beta1, beta2, 1e-8, 0.0, t,
                                            1000 + t)
    return [s.float() for s in state if s.numel()]


def _state_rounded_to_nearest(steps, algorithm, beta1, beta2, grad, P=4, d=4):
    """The same trajectory with the state rounded to the nearest bf16 after every step (torch's
    reference step, then torch's round-to-nearest-even cast): what stochastic rounding replaces."""
    W = torch.zeros(P, d)
    state = [torch.zeros(P, d), torch.zeros(P, d)]
    dtheta, z = torch.full((1, P), grad), torch.ones(1, d)
    for t in range(1, steps + 1):
        output_layer_step(W, *state, dtheta, z, algorithm, 0.0, beta1, beta2, 1e-8, 0.0, t)
        for s in state:
            s.copy_(s.bfloat16().float())
    return state[:1] if algorithm == SGD else state


# (algorithm, β1, β2, gradient, the decay of each state tensor's recursion). SGD's buffer tends to
# g/(1 − β1) = 0.937, Adam's m to g = 0.937 and v toward g² = 0.88 (0.16 after 200 steps).
MANY_STEPS = {"sgd-momentum": (SGD, 0.9, 0.0, 0.0937, [0.9]), "adam": (ADAM, 0.9, 0.999, 0.937, [0.9, 0.999])}
STEPS = 200


@pytest.mark.parametrize("case", sorted(MANY_STEPS))
def test_bf16_state_is_unbiased_over_many_steps(case):
    """Each state tensor follows s_t = a·s_{t−1} + c, stored with a rounding error e_t, so after T
    steps s_T − s_T(fp32) = Σ_t a^{T−t}·e_t: zero mean (E[e_t | past] = 0) and variance at most
    (u/2)²·(1 − a^{2T})/(1 − a²), u the widest bf16 spacing the state passes through (|e_t| < u,
    and a two-point error of spread u has variance ≤ u²/4). The mean over N = P·d independent
    elements has σ ≤ that / √N. fp32 rounding in the recursion adds ~T·2^-24, far below σ."""
    algorithm, beta1, beta2, grad, decays = MANY_STEPS[case]
    stored = _state_after(STEPS, torch.bfloat16, algorithm, beta1, beta2, grad)
    exact = _state_after(STEPS, torch.float32, algorithm, beta1, beta2, grad)
    nearest = _state_rounded_to_nearest(STEPS, algorithm, beta1, beta2, grad)
    for slot, (s, x, rn, a) in enumerate(zip(stored, exact, nearest, decays)):
        assert torch.equal(x, x[0, 0].expand_as(x))  # one fp32 trajectory, shared by every element
        x0 = x[0, 0].item()
        # The spacing of the binade above the largest value (a 1/64 margin for the bf16 run's spread).
        u = 2.0 ** (math.floor(math.log2(x0 * (1 + 2 ** -6))) - 7)
        sigma = u / 2 * math.sqrt((1 - a ** (2 * STEPS)) / (1 - a * a) / x.numel())
        bias = s.double().mean().item() - x0
        assert abs(bias) <= SIGMAS * sigma, f"state{slot + 1}: mean error {bias:.3g}, σ {sigma:.3g}"
        # Round-to-nearest stalls: once a step's change is under half an ulp the state stops moving.
        assert (rn.double() - x0).abs().min().item() > SIGMAS * sigma, f"state{slot + 1}"
        assert not torch.equal(s, s[0, 0].expand_as(s))  # the elements were rounded independently
