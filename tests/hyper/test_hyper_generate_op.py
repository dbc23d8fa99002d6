"""``hyperkd::hyper_generate`` (LayerKD-HN Eq. 2–3): each backend against the eager reference."""
import math

import pytest
import torch

from hyperkd.kernels import hyper_generate as triton_hg
from hyperkd.ops import hyper_generate
from hyperkd.ops.hyper_generate import op_geometry
from hyperkd.reference import hyper_generate as reference
from tests.tolerances import assert_close

# Odd sizes: a 1×1 conv, a conv bias, a Linear weight, channel counts that are not powers of two.
SHAPES = [(5, 3, 3, 3), (5,), (7, 5, 1, 1), (3, 7), (6, 3, 2, 3)]
CHANNELS_LAST = [True, False, True, False, True]
P = sum(math.prod(s) for s in SHAPES)


def inputs(B, d=9, dtype=torch.float32, w_dtype=None, requires_grad=False):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    W = torch.randn(P, d, dtype=acc).to(w_dtype or dtype)
    z, b, theta0 = torch.randn(B, d, dtype=acc), torch.randn(P, dtype=acc), torch.randn(P, dtype=acc)
    return [t.requires_grad_(requires_grad) for t in (W, z, b, theta0)]


def strided_grads(outs):
    """Upstream gradients in a different layout from the outputs (as autograd may hand them)."""
    return [torch.randn(o.shape[::-1]).t() if o.dim() == 2 else torch.randn_like(o, memory_format=torch.contiguous_format)
            for o in outs]


@pytest.mark.parametrize("B", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_forward_matches_reference_values_and_layout(B, channels_last):
    cl = CHANNELS_LAST if channels_last else [False] * len(SHAPES)
    W, z, b, theta0 = inputs(B)
    out = hyper_generate(W, z, b, theta0, SHAPES, cl)
    ref = reference(W, z, b, theta0, SHAPES, cl)
    for o, r, flag in zip(out, ref, cl):
        assert_close(o, r, torch.float32)
        fmt = torch.channels_last if flag else torch.contiguous_format
        assert o[0].is_contiguous(memory_format=fmt)


def test_cpu_bf16_storage_of_W_matches_reference():
    W, z, b, theta0 = inputs(2, w_dtype=torch.bfloat16)
    for o, r in zip(hyper_generate(W, z, b, theta0, SHAPES), reference(W, z, b, theta0, SHAPES)):
        # W is exact in bf16 and the products accumulate in fp32: only the fp32 tolerance applies.
        assert_close(o, r, torch.float32)


def test_cpu_backward_returns_dz_packed_dtheta_and_sum():
    W, z, b, theta0 = inputs(3)
    geometry = op_geometry(SHAPES, CHANNELS_LAST)
    outs = hyper_generate(W, z, b, theta0, SHAPES, CHANNELS_LAST)
    grads = strided_grads(outs)
    dz, dtheta, dsum = torch.ops.hyperkd.hyper_generate_backward(grads, W, z, *geometry)
    flat = torch.cat([g.reshape(3, -1) for g in grads], dim=1)
    assert_close(dtheta, flat, torch.float32)
    assert_close(dsum, flat.sum(0), torch.float32)
    assert_close(dz, flat @ W, torch.float32, scale=math.sqrt(P))


def test_gradcheck_fp64():
    W, z, b, theta0 = inputs(2, d=4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: hyper_generate(*a, SHAPES, CHANNELS_LAST), (W, z, b, theta0))


def test_gradients_match_autograd_through_reference():
    W, z, b, theta0 = inputs(3, requires_grad=True)
    grads = strided_grads(reference(W, z, b, theta0, SHAPES, CHANNELS_LAST))
    fused = torch.autograd.grad(hyper_generate(W, z, b, theta0, SHAPES, CHANNELS_LAST), (W, z, b, theta0), grads)
    expected = torch.autograd.grad(reference(W, z, b, theta0, SHAPES, CHANNELS_LAST), (W, z, b, theta0), grads)
    for name, f, e in zip("W z b theta0".split(), fused, expected):
        assert_close(f, e, torch.float32, scale=math.sqrt(P), msg=name)


def test_opcheck():
    W, z, b, theta0 = inputs(2, requires_grad=True)
    torch.library.opcheck(torch.ops.hyperkd.hyper_generate.default,
                          (W, z, b, theta0, *op_geometry(SHAPES, CHANNELS_LAST)))


def test_compile_fullgraph_forward_and_backward():
    W, z, b, theta0 = inputs(2, requires_grad=True)

    def loss(W, z, b, theta0):
        return sum(o.square().sum() for o in hyper_generate(W, z, b, theta0, SHAPES, CHANNELS_LAST))

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(W, z, b, theta0), (W, z, b, theta0))
    want = torch.autograd.grad(loss(W, z, b, theta0), (W, z, b, theta0))
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
    W, z, b, theta0 = inputs(1)
    args = dict(shapes=SHAPES, channels_last=None) | kwargs
    with pytest.raises(error, match=match):
        hyper_generate(W, z, b, theta0, args["shapes"], args["channels_last"])


def test_bad_tensors_raise_naming_the_argument():
    W, z, b, theta0 = inputs(1)
    with pytest.raises(ValueError, match="z: expected a B_γ×9 matrix"):
        hyper_generate(W, z[:, :4], b, theta0, SHAPES)
    with pytest.raises(ValueError, match="theta0: expected a torch.float32 vector"):
        hyper_generate(W, z, b, theta0[:-1], SHAPES)
    with pytest.raises(TypeError, match="b: expected a tensor"):
        hyper_generate(W, z, None, theta0, SHAPES)


@pytest.mark.interpret
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.float16])
def test_triton_forward_and_backward_match_reference(w_dtype):
    B = 2
    W, z, b, theta0 = inputs(B, w_dtype=w_dtype)
    geometry = op_geometry(SHAPES, CHANNELS_LAST)
    outs = triton_hg.hyper_generate(W, z, b, theta0, *geometry)
    ref = reference(W, z, b, theta0, SHAPES, CHANNELS_LAST)
    for o, r, flag in zip(outs, ref, CHANNELS_LAST):
        assert_close(o, r, torch.float32)
        assert o[0].is_contiguous(memory_format=torch.channels_last if flag else torch.contiguous_format)
    grads = strided_grads(outs)
    dz, dtheta, dsum = triton_hg.hyper_generate_backward(grads, W, z, *geometry)
    cpu = torch.ops.hyperkd.hyper_generate_backward(grads, W, z, *geometry)
    for name, t, c in zip(("dz", "dtheta", "dsum"), (dz, dtheta, dsum), cpu):
        assert_close(t, c, torch.float32, scale=math.sqrt(P), msg=name)


@pytest.mark.gpu
def test_cuda_op_matches_cpu_op_on_a_real_layer_list():
    shapes = [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (128,), (256, 128, 1, 1)]
    P_real = sum(math.prod(s) for s in shapes)
    W, z = torch.randn(P_real, 128) * 0.01, torch.randn(4, 128)
    b, theta0 = torch.randn(P_real), torch.randn(P_real)
    cl = [len(s) == 4 for s in shapes]
    cpu = hyper_generate(W, z, b, theta0, shapes, cl)
    cuda = hyper_generate(W.cuda(), z.cuda(), b.cuda(), theta0.cuda(), shapes, cl)
    for c, g in zip(cpu, cuda):
        assert_close(g.cpu(), c, torch.float32)
