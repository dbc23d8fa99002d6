"""``hyperkd::hyper_generate`` (LayerKD-HN Eq. 2–3): each backend against the eager reference."""
import math

import pytest
import torch

from hyperkd.kernels import hyper_generate as triton_hg
from hyperkd.ops import hyper_generate
from hyperkd.ops.hyper_generate import gamma_sum, op_geometry
from hyperkd.reference import hyper_generate as reference
from hyperkd.reference.hyper_generate import hyper_generate_backward as reference_backward
from tests.tolerances import assert_close

# Odd sizes: a 1×1 conv, a conv bias, a Linear weight, channel counts that are not powers of two.
SHAPES = [(5, 3, 3, 3), (5,), (7, 5, 1, 1), (3, 7), (6, 3, 2, 3)]
CHANNELS_LAST = [True, False, True, False, True]
P = sum(math.prod(s) for s in SHAPES)


def inputs(B, d=9, dtype=torch.float32, w_dtype=None, requires_grad=False):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    W = torch.randn(P, d, dtype=acc).to(w_dtype or dtype)
    z, theta0 = torch.randn(B, d, dtype=acc), torch.randn(P, dtype=acc)
    return [t.requires_grad_(requires_grad) for t in (W, z, theta0)]


def strided_grads(outs):
    """Upstream gradients in a different layout from the outputs (as autograd may hand them)."""
    return [torch.randn(o.shape[::-1]).t() if o.dim() == 2 else torch.randn_like(o, memory_format=torch.contiguous_format)
            for o in outs]


@pytest.mark.parametrize("B", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_forward_matches_reference_values_and_layout(B, channels_last):
    cl = CHANNELS_LAST if channels_last else [False] * len(SHAPES)
    W, z, theta0 = inputs(B)
    out = hyper_generate(W, z, theta0, SHAPES, cl)
    ref = reference(W, z, theta0, SHAPES, cl)
    for o, r, flag in zip(out, ref, cl):
        assert_close(o, r, torch.float32)
        fmt = torch.channels_last if flag else torch.contiguous_format
        assert o[0].is_contiguous(memory_format=fmt)


def test_cpu_bf16_storage_of_W_matches_reference():
    W, z, theta0 = inputs(2, w_dtype=torch.bfloat16)
    for o, r in zip(hyper_generate(W, z, theta0, SHAPES), reference(W, z, theta0, SHAPES)):
        # W is exact in bf16 and the products accumulate in fp32: only the fp32 tolerance applies.
        assert_close(o, r, torch.float32)


@pytest.mark.parametrize("B", [1, 2, 3])
def test_cpu_backward_returns_dz_and_packed_dtheta_as_the_reference(B):
    W, z, theta0 = inputs(B)
    geometry = op_geometry(SHAPES, CHANNELS_LAST)
    grads = strided_grads(hyper_generate(W, z, theta0, SHAPES, CHANNELS_LAST))
    out = torch.ops.hyperkd.hyper_generate_backward(grads, W, z, *geometry)
    assert len(out) == 2  # no Σ_γ dθ: it would be a second P-vector (gamma_sum makes it)
    ref_dz, ref_dtheta = reference_backward(grads, W, z)
    assert_close(out[1], ref_dtheta, torch.float32)
    assert_close(out[0], ref_dz, torch.float32, scale=math.sqrt(P))


def test_backward_schema_returns_dz_and_dtheta_only():
    schema = torch.ops.hyperkd.hyper_generate_backward.default._schema
    assert [r.name for r in schema.returns] == ["dz", "dtheta"]
    assert not any(a.alias_info for a in schema.arguments)  # reads its inputs only


def test_gamma_sum_is_a_view_for_one_gamma_and_a_sum_for_several():
    one = torch.randn(1, P)
    assert gamma_sum(one).data_ptr() == one.data_ptr() and gamma_sum(one).shape == (P,)
    several = torch.randn(3, P)
    torch.testing.assert_close(gamma_sum(several), several.sum(0), rtol=0, atol=0)


@pytest.mark.parametrize("B", [1, 2])
def test_theta0_is_the_output_bias_and_gets_the_gamma_sum_of_dtheta(B):
    W, z, theta0 = inputs(B, requires_grad=True)
    outs = hyper_generate(W, z, theta0, SHAPES, CHANNELS_LAST)
    grads = strided_grads(outs)
    torch.autograd.backward(outs, grads)
    dtheta = torch.cat([g.reshape(B, -1) for g in grads], dim=1)
    torch.testing.assert_close(theta0.grad, dtheta.sum(0), rtol=0, atol=0)
    # θ = W·z + θ0 and nothing else: with W = 0 the generated weights are θ0 itself.
    zero = hyper_generate(torch.zeros_like(W), z.detach(), theta0.detach(), SHAPES)
    assert torch.equal(torch.cat([o.reshape(B, -1) for o in zero], 1), theta0.detach().expand(B, -1))


def test_op_schema_has_one_base_vector():
    schema = torch.ops.hyperkd.hyper_generate.default._schema
    assert [a.name for a in schema.arguments][:3] == ["W", "z", "theta0"]


def test_gradcheck_fp64():
    W, z, theta0 = inputs(2, d=4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: hyper_generate(*a, SHAPES, CHANNELS_LAST), (W, z, theta0))


def test_gradients_match_autograd_through_reference():
    W, z, theta0 = inputs(3, requires_grad=True)
    grads = strided_grads(reference(W, z, theta0, SHAPES, CHANNELS_LAST))
    fused = torch.autograd.grad(hyper_generate(W, z, theta0, SHAPES, CHANNELS_LAST), (W, z, theta0), grads)
    expected = torch.autograd.grad(reference(W, z, theta0, SHAPES, CHANNELS_LAST), (W, z, theta0), grads)
    for name, f, e in zip("W z theta0".split(), fused, expected):
        assert_close(f, e, torch.float32, scale=math.sqrt(P), msg=name)


@pytest.mark.parametrize("B", [1, 2])
def test_opcheck(B):
    W, z, theta0 = inputs(B, requires_grad=True)
    torch.library.opcheck(torch.ops.hyperkd.hyper_generate.default,
                          (W, z, theta0, *op_geometry(SHAPES, CHANNELS_LAST)))


def test_opcheck_of_the_backward_op():
    W, z, theta0 = inputs(2)
    grads = strided_grads(hyper_generate(W, z, theta0, SHAPES, CHANNELS_LAST))
    torch.library.opcheck(torch.ops.hyperkd.hyper_generate_backward.default,
                          (grads, W, z, *op_geometry(SHAPES, CHANNELS_LAST)))


def test_compile_fullgraph_forward_and_backward():
    W, z, theta0 = inputs(2, requires_grad=True)

    def loss(W, z, theta0):
        return sum(o.square().sum() for o in hyper_generate(W, z, theta0, SHAPES, CHANNELS_LAST))

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(W, z, theta0), (W, z, theta0))
    want = torch.autograd.grad(loss(W, z, theta0), (W, z, theta0))
    for g, w in zip(got, want):
        assert_close(g, w, torch.float32)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(shapes=[(5, 3, 3, 3)]), ValueError, "shapes: the tensors hold 135 values but W has"),
    (dict(shapes=[]), ValueError, "shapes: expected a non-empty list"),
    (dict(shapes=[(0,)]), ValueError, r"shapes\[0\]: expected 1 to 4 positive sizes"),
    (dict(channels_last=[True, True, False, False, False]), ValueError, r"channels_last\[1\]: channels_last needs a 4-D"),
    (dict(channels_last=[True]), ValueError, "channels_last: expected 5 flags"),
])
def test_bad_geometry_raises_naming_the_argument(kwargs, error, match):
    W, z, theta0 = inputs(1)
    args = dict(shapes=SHAPES, channels_last=None) | kwargs
    with pytest.raises(error, match=match):
        hyper_generate(W, z, theta0, args["shapes"], args["channels_last"])


def test_backward_op_with_bad_gradients_raises_naming_the_argument():
    W, z, theta0 = inputs(2)
    geometry = op_geometry(SHAPES, CHANNELS_LAST)
    grads = strided_grads(hyper_generate(W, z, theta0, SHAPES, CHANNELS_LAST))
    with pytest.raises(RuntimeError, match="grads: expected 5 tensors, got 4"):
        torch.ops.hyperkd.hyper_generate_backward(grads[:-1], W, z, *geometry)
    with pytest.raises(RuntimeError, match=r"grads\[1\]: expected a Float tensor of the generated shape"):
        torch.ops.hyperkd.hyper_generate_backward([grads[0], grads[1][:1]] + grads[2:], W, z, *geometry)
    with pytest.raises(RuntimeError, match="z: expected a contiguous B_γ×9 code matrix"):
        torch.ops.hyperkd.hyper_generate_backward(grads, W, z[:, :4].contiguous(), *geometry)


def test_bad_tensors_raise_naming_the_argument():
    W, z, theta0 = inputs(1)
    with pytest.raises(ValueError, match="z: expected a B_γ×9 matrix"):
        hyper_generate(W, z[:, :4], theta0, SHAPES)
    with pytest.raises(ValueError, match="theta0: expected a torch.float32 vector"):
        hyper_generate(W, z, theta0[:-1], SHAPES)
    with pytest.raises(TypeError, match="theta0: expected a tensor"):
        hyper_generate(W, z, None, SHAPES)


# The Triton kernels run under the interpreter on CPU tensors, and on the real device where there is
# one. bf16 W only on the device: the interpreter's bf16 arithmetic is not the hardware's.
TRITON_CASES = [pytest.param("cpu", w_dtype, B, marks=pytest.mark.interpret, id=f"interpret-{w_dtype}-B{B}")
                for w_dtype, B in [(torch.float32, 1), (torch.float32, 2), (torch.float16, 2)]]
TRITON_CASES += [pytest.param("cuda", w_dtype, B, marks=pytest.mark.gpu, id=f"cuda-{w_dtype}-B{B}")
                 for w_dtype, B in [(torch.float32, 2), (torch.float16, 2), (torch.bfloat16, 1), (torch.bfloat16, 3)]]


@pytest.mark.parametrize("device, w_dtype, B", TRITON_CASES)
def test_triton_forward_and_backward_match_reference(device, w_dtype, B):
    W, z, theta0 = inputs(B, w_dtype=w_dtype)
    geometry = op_geometry(SHAPES, CHANNELS_LAST)
    outs = triton_hg.hyper_generate(W.to(device), z.to(device), theta0.to(device), *geometry)
    # W's values are exact in its storage dtype and the products accumulate in fp32: fp32 tolerance.
    ref = reference(W, z, theta0, SHAPES, CHANNELS_LAST)
    for o, r, flag in zip(outs, ref, CHANNELS_LAST):
        assert o.device.type == device
        assert_close(o.cpu(), r, torch.float32)
        assert o[0].is_contiguous(memory_format=torch.channels_last if flag else torch.contiguous_format)
    grads = strided_grads(ref)
    triton_out = triton_hg.hyper_generate_backward([g.to(device) for g in grads], W.to(device), z.to(device),
                                                   *geometry)
    assert len(triton_out) == 2
    ref = reference_backward(grads, W, z)
    cpu = torch.ops.hyperkd.hyper_generate_backward(grads, W, z, *geometry)
    for name, t, r, c in zip(("dz", "dtheta"), triton_out, ref, cpu):
        assert_close(t.cpu(), r, torch.float32, scale=math.sqrt(P), msg=name)
        assert_close(t.cpu(), c, torch.float32, scale=math.sqrt(P), msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16])
def test_cuda_op_matches_cpu_op_on_a_real_layer_list(w_dtype):
    shapes = [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (128,), (256, 128, 1, 1)]
    P_real = sum(math.prod(s) for s in shapes)
    W, z = (torch.randn(P_real, 128) * 0.01).to(w_dtype), torch.randn(4, 128)
    theta0 = torch.randn(P_real)
    cl = [len(s) == 4 for s in shapes]
    cpu = hyper_generate(W, z, theta0, shapes, cl)
    cuda = hyper_generate(W.cuda(), z.cuda(), theta0.cuda(), shapes, cl)
    for c, g in zip(cpu, cuda):
        assert_close(g.cpu(), c, torch.float32)
    grads, geometry = [torch.randn_like(c) for c in cpu], op_geometry(shapes, cl)
    ref = torch.ops.hyperkd.hyper_generate_backward(grads, W, z, *geometry)
    got = torch.ops.hyperkd.hyper_generate_backward([g.cuda() for g in grads], W.cuda(), z.cuda(), *geometry)
    for name, g, r in zip(("dz", "dtheta"), got, ref):
        assert_close(g.cpu(), r, torch.float32, scale=math.sqrt(P_real), msg=name)
