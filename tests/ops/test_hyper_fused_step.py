"""``hyperkd::hyper_fused_step_``, the fused optimizer step of the output layer W (LayerKD-HN
§3.2; ``kernels/hyper_fused_step.py``, ``csrc/cpu/hyper_fused_step.cpp``): each backend against the
eager reference ``output_layer_step``, stochastic rounding of bf16 storage, and the step that also
generates the next step's W·z (``z_next``), which ``hyper_generate`` then reads as ``carried``."""
import pytest
import torch

from hyperkd.kernels import hyper_fused_step as triton_fs
from hyperkd.kernels import hyper_generate as triton_hg
from hyperkd.ops.hyper_generate import ADAM, ADAMW, SGD, hyper_generate, op_geometry
from hyperkd.reference.hyper_generate import hyper_generate as reference_generate
from hyperkd.reference.hyper_generate import output_layer_step
from tests.tolerances import assert_close

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


# --- the step that generates the next step's W·z ---------------------------------------------------

SHAPES = [(5, 3, 3, 3), (5,), (7, 5, 1, 1), (3, 7)]
P = sum(torch.Size(s).numel() for s in SHAPES)
# (algorithm, beta1, weight decay, W dtype, state dtype)
OP_CASES = [(SGD, 0.0, 0.0, torch.float32, torch.float32), (SGD, 0.9, 1e-3, torch.float32, torch.float32),
            (ADAM, 0.9, 1e-3, torch.float32, torch.float32), (ADAMW, 0.9, 1e-2, torch.float32, torch.float32),
            (SGD, 0.9, 0.0, torch.bfloat16, torch.bfloat16), (ADAMW, 0.9, 1e-2, torch.bfloat16, torch.bfloat16)]


def op_inputs(w_dtype, s_dtype, d=9, B=2, B_next=3):
    W = torch.randn(P, d).to(w_dtype)
    states = [torch.zeros(P, d, dtype=s_dtype), torch.zeros(P, d, dtype=s_dtype)]
    return W, states, torch.randn(B, P), torch.randn(B, d), torch.randn(B_next, d), torch.randn(P)


@pytest.mark.parametrize("algorithm, beta1, wd, w_dtype, s_dtype", OP_CASES)
def test_cpu_step_generates_exactly_what_generation_gives_from_the_updated_w(algorithm, beta1, wd, w_dtype,
                                                                            s_dtype):
    W, states, dtheta, z, z_next, theta0 = op_inputs(w_dtype, s_dtype)
    geometry = op_geometry(SHAPES, [True, False, True, False])
    for t in (1, 2):  # the second step starts from non-zero state
        carried = torch.ops.hyperkd.hyper_fused_step_(W, *states, dtheta * t, z, algorithm, 1e-2, beta1, 0.999,
                                                      1e-8, wd, t, 7, z_next)
        assert carried.shape == (z_next.shape[0], P)
        plain = torch.ops.hyperkd.hyper_generate(W, z_next, theta0, *geometry)
        chained = torch.ops.hyperkd.hyper_generate(W, z_next, theta0, *geometry, carried)
        for a, b in zip(chained, plain):
            assert torch.equal(a, b)  # the same dot product on the same stored row: the same bits
            assert a.stride() == b.stride()


def test_cpu_step_without_next_codes_returns_nothing_and_updates_the_same():
    W, states, dtheta, z, z_next, _ = op_inputs(torch.float32, torch.float32)
    W2, states2 = W.clone(), [s.clone() for s in states]
    out = torch.ops.hyperkd.hyper_fused_step_(W, *states, dtheta, z, ADAM, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, 3)
    torch.ops.hyperkd.hyper_fused_step_(W2, *states2, dtheta, z, ADAM, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, 3, z_next)
    assert out.numel() == 0
    assert torch.equal(W, W2) and all(torch.equal(a, b) for a, b in zip(states, states2))


@pytest.mark.parametrize("algorithm, beta1, wd, w_dtype, s_dtype", [OP_CASES[1], OP_CASES[3]])
def test_step_with_next_codes_matches_the_reference_update_then_generation(algorithm, beta1, wd, w_dtype, s_dtype):
    W, states, dtheta, z, z_next, theta0 = op_inputs(w_dtype, s_dtype)
    ref_W, ref_states = W.clone(), [s.clone() for s in states]
    carried = torch.ops.hyperkd.hyper_fused_step_(W, *states, dtheta, z, algorithm, 1e-2, beta1, 0.999, 1e-8, wd,
                                                  1, 0, z_next)
    output_layer_step(ref_W, *ref_states, dtheta, z, algorithm, 1e-2, beta1, 0.999, 1e-8, wd, 1)
    assert_close(W, ref_W, torch.float32, msg="W")
    ref = reference_generate(ref_W, z_next, theta0, SHAPES)
    got = hyper_generate(W, z_next, theta0, SHAPES, carried=carried)
    for g, r in zip(got, ref):
        assert_close(g, r, torch.float32)


def next_into(step, W, states, dtheta, z, algorithm, beta1, wd, z_next, out):
    """The generating step with ``next_out`` = ``out`` (or dθ itself): nothing is returned."""
    out = dtheta if out is None else out  # None: into dθ itself
    returned = step(W, *states, dtheta, z, algorithm, 1e-2, beta1, 0.999, 1e-8, wd, 1, 5, z_next, out)
    assert returned.numel() == 0
    return out


@pytest.mark.parametrize("algorithm, beta1, wd, w_dtype, s_dtype", OP_CASES)
def test_cpu_step_writes_the_next_generation_into_next_out_even_when_it_is_dtheta(algorithm, beta1, wd, w_dtype,
                                                                                  s_dtype):
    # B_next = B: next_out may be dθ's own buffer, which the chained optimizer step relies on.
    W, states, dtheta, z, z_next, _ = op_inputs(w_dtype, s_dtype, B_next=2)
    runs = [(W.clone(), [s.clone() for s in states]) for _ in range(3)]
    step = torch.ops.hyperkd.hyper_fused_step_
    fresh = step(runs[0][0], *runs[0][1], dtheta, z, algorithm, 1e-2, beta1, 0.999, 1e-8, wd, 1, 5, z_next)
    separate = next_into(step, *runs[1], dtheta, z, algorithm, beta1, wd, z_next, torch.empty(2, P))
    aliased = next_into(step, *runs[2], dtheta.clone(), z, algorithm, beta1, wd, z_next, None)
    for W_i, states_i in runs[1:]:
        assert torch.equal(W_i, runs[0][0]) and all(torch.equal(a, b) for a, b in zip(states_i, runs[0][1]))
    assert torch.equal(separate, fresh) and torch.equal(aliased, fresh)


@pytest.mark.interpret
def test_triton_step_writes_the_next_generation_into_dtheta_like_the_cpu_op():
    W, states, dtheta, z, z_next, _ = op_inputs(torch.float32, torch.float32, B_next=2)
    cpu_W, cpu_states = W.clone(), [s.clone() for s in states]
    aliased = next_into(triton_fs.hyper_fused_step_, W, states, dtheta.clone(), z, SGD, 0.9, 1e-3, z_next, None)
    cpu = torch.ops.hyperkd.hyper_fused_step_(cpu_W, *cpu_states, dtheta, z, SGD, 1e-2, 0.9, 0.999, 1e-8, 1e-3, 1,
                                              5, z_next)
    assert_close(W, cpu_W, torch.float32, msg="W")
    assert_close(aliased, cpu, torch.float32, scale=3, msg="W_{t+1}·z_next in dθ's buffer")


@pytest.mark.interpret
@pytest.mark.parametrize("algorithm, beta1, wd", [(SGD, 0.9, 1e-3), (ADAMW, 0.9, 1e-2)])
def test_triton_step_with_next_codes_matches_the_cpu_op(algorithm, beta1, wd):
    W, states, dtheta, z, z_next, theta0 = op_inputs(torch.float32, torch.float32)
    cpu_W, cpu_states = W.clone(), [s.clone() for s in states]
    carried = triton_fs.hyper_fused_step_(W, *states, dtheta, z, algorithm, 1e-2, beta1, 0.999, 1e-8, wd, 1, 0,
                                          z_next)
    cpu = torch.ops.hyperkd.hyper_fused_step_(cpu_W, *cpu_states, dtheta, z, algorithm, 1e-2, beta1, 0.999, 1e-8,
                                              wd, 1, 0, z_next)
    assert_close(W, cpu_W, torch.float32, msg="W")
    assert_close(carried, cpu, torch.float32, scale=3, msg="W_{t+1}·z_next")
    geometry = op_geometry(SHAPES, [True, False, True, False])
    for a, b in zip(triton_hg.hyper_generate(W, z_next, theta0, *geometry, carried),
                    torch.ops.hyperkd.hyper_generate(cpu_W, z_next, theta0, *geometry)):
        assert_close(a, b, torch.float32, scale=3)


def test_opcheck_of_the_generating_step_and_of_generation_from_carried():
    W, states, dtheta, z, z_next, theta0 = op_inputs(torch.float32, torch.float32)
    torch.library.opcheck(torch.ops.hyperkd.hyper_fused_step_.default,
                          (W, *states, dtheta, z, SGD, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, 7, z_next),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.hyperkd.hyper_fused_step_.default,
                          (W, *states, dtheta, z, SGD, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, 7, z_next, torch.empty(3, P)),
                          test_utils=("test_schema", "test_faketensor"))
    carried = torch.randn(3, P)
    torch.library.opcheck(torch.ops.hyperkd.hyper_generate.default,
                          (W, z_next.requires_grad_(), theta0.requires_grad_(), *op_geometry(SHAPES, [False] * 4),
                           carried))


def test_bad_carried_raises_naming_it():
    W, _, _, _, z_next, theta0 = op_inputs(torch.float32, torch.float32)
    with pytest.raises(ValueError, match="carried: expected W·z, a torch.float32 3×"):
        hyper_generate(W, z_next, theta0, SHAPES, carried=torch.randn(2, P))
    with pytest.raises(RuntimeError, match="carried: expected a contiguous Float 3×"):
        torch.ops.hyperkd.hyper_generate(W, z_next, theta0, *op_geometry(SHAPES, [False] * 4), torch.randn(3, P - 1))
    with pytest.raises(RuntimeError, match="z_next: expected a contiguous float32 B_next×9"):
        torch.ops.hyperkd.hyper_fused_step_(W, torch.empty(0), torch.empty(0), torch.randn(1, P), z_next[:1],
                                            SGD, 1e-2, 0.0, 0.999, 1e-8, 0.0, 1, 0, torch.randn(1, 4))
    with pytest.raises(RuntimeError, match="next_out: expected a contiguous float32 3×"):
        torch.ops.hyperkd.hyper_fused_step_(W, torch.empty(0), torch.empty(0), torch.randn(1, P), z_next[:1],
                                            SGD, 1e-2, 0.0, 0.999, 1e-8, 0.0, 1, 0, z_next, torch.empty(2, P))
    with pytest.raises(RuntimeError, match="next_out: given without z_next"):
        torch.ops.hyperkd.hyper_fused_step_(W, torch.empty(0), torch.empty(0), torch.randn(1, P), z_next[:1],
                                            SGD, 1e-2, 0.0, 0.999, 1e-8, 0.0, 1, 0, None, torch.empty(3, P))
