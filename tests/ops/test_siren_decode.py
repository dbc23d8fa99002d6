"""Parity of every siren_decode backend with the eager reference, values and gradients.

The reference runs in fp64; a backend's error is bounded by its dtype's rounding over products of
``width`` terms (``assert_within_rounding``). ω0 is folded into the weights, so it scales the
magnitudes the bound is relative to, not the bound's form.
"""
import importlib
import math

import pytest
import torch

import hyperkd
from hyperkd import reference
from hyperkd.kernels import siren_decode as triton_decode
from hyperkd.reference.siren_decode import pre_activations

# The module, which hyperkd.ops shadows with its function of the same name.
siren_ops = importlib.import_module("hyperkd.ops.siren_decode")

OMEGA0 = 30.0
ACT = {"relu": 0, "sin": 1}
GRAD_NAMES = ("T_l", "T_f", "T_c", "hidden_w", "hidden_b", "out_w", "out_b")


def make_inputs(n, width, hidden, out, grid=(3, 7, 5), dtype=torch.float32, activation="sin"):
    """Decode-op inputs as a SIREN (ω0 folded in) or a ReLU predictor would pass them."""
    g = torch.Generator().manual_seed(n * 1000 + width)
    index = torch.stack([torch.randint(0, r, (n,), generator=g) for r in grid], dim=1)
    scale = OMEGA0 if activation == "sin" else 1.0
    bound = math.sqrt(6 / width) / OMEGA0 if activation == "sin" else 1 / math.sqrt(width)

    def uniform(*shape, b):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * b).to(dtype)

    tables = [uniform(r, width, b=1.0 if activation == "sin" else 1.0) for r in grid]
    weights = [scale * uniform(hidden, width, width, b=bound), scale * uniform(hidden, width, b=bound),
               uniform(out, width, b=bound), uniform(out, b=bound)]
    return index, [t.requires_grad_() for t in tables + weights]


def reference_values_and_grads(index, tensors, activation, grad_out):
    """The reference in fp64, whatever the inputs' dtype: the error measured is the backend's alone."""
    leaves = [t.detach().double().requires_grad_() for t in tensors]
    y = reference.siren_decode(index, *leaves, ACT[activation])
    # With no hidden layer the eager graph never touches the empty hidden tensors: zero gradients.
    return y.detach(), torch.autograd.grad(y, leaves, grad_out.double(), materialize_grads=True)


# Each layer's product sums `width` terms, so a result's rounding error grows as
# eps·√width·(its magnitude): over CASES, the C++, Triton and GEMM-chain backends in fp32 and fp64
# measure max|got − ref| / (eps·√width·max|ref|) ≤ 2.2 against an fp64 reference; the margin
# leaves about 4× over that.
ROUNDING_MARGIN = 8


def assert_within_rounding(got, want, dtype, width, msg, eps=None):
    """|got − want| ≤ ROUNDING_MARGIN·eps·√width·max|want|, eps the dtype's unless given."""
    eps = torch.finfo(dtype).eps if eps is None else eps
    magnitude = want.abs().amax().item() if want.numel() else 0.0
    atol = max(ROUNDING_MARGIN * eps * math.sqrt(width) * magnitude, torch.finfo(dtype).tiny)
    torch.testing.assert_close(got.to(want.dtype), want, rtol=0, atol=atol,
                               msg=lambda m: f"{msg}: {m}")


def check(values, grads, index, tensors, activation, grad_out, eps=None):
    """Values and the seven gradients against the fp64 reference, within rounding of the inputs'
    dtype (or of ``eps``: TF32 products on a GPU)."""
    dtype, width = tensors[0].dtype, tensors[-2].shape[1]
    ref, ref_grads = reference_values_and_grads(index, tensors, activation, grad_out)
    assert values.dtype == dtype
    assert_within_rounding(values, ref, dtype, width, "values", eps)
    for name, got, want in zip(GRAD_NAMES, grads, ref_grads):
        assert got.shape == want.shape and got.dtype == dtype, name
        assert_within_rounding(got, want, dtype, width, name, eps)


# Widths and output sizes on and off the CPU tiles' panel widths (16 fp32 and 8 fp64 with AVX2,
# twice that with AVX-512); width 150 with 300 rows walks every product's K in more than one chunk
# (kDepth = 128), over two blocks, in fp32 (and in fp64 with AVX2); at width 300 the hidden
# products go to BLAS (tile_gemm_fits), the output layer's stay tiled.
CASES = [(37, 16, 3, 9, "sin"), (37, 16, 3, 9, "relu"), (5, 12, 0, 1, "sin"), (70, 33, 2, 9, "relu"),
         (1, 8, 1, 25, "sin"), (300, 150, 1, 9, "sin"), (40, 300, 1, 9, "relu")]


def check_pre_activations(saved, index, tensors, activation, eps=None):
    """The stored buffer is z₀..z_NH of the reference, layer by layer."""
    width = tensors[-2].shape[1]
    with torch.no_grad():
        zs = pre_activations(index, *[t.double() for t in tensors[:5]], ACT[activation])
    assert saved.shape == (len(zs), len(index), width)
    for layer, (got, want) in enumerate(zip(saved, zs)):
        assert_within_rounding(got, want, tensors[0].dtype, width, f"pre-activations {layer}", eps)


@pytest.mark.parametrize("save", [False, True], ids=["recompute", "stored"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,width,hidden,out,activation", CASES)
def test_cpp_matches_reference(n, width, hidden, out, activation, dtype, save):
    index, tensors = make_inputs(n, width, hidden, out, dtype=dtype, activation=activation)
    y, saved = torch.ops.hyperkd.siren_decode(index, *tensors, ACT[activation], save)
    if save:
        check_pre_activations(saved, index, tensors, activation)
    else:
        assert saved.numel() == 0
    grad_out = torch.randn(y.shape, dtype=dtype)
    grads = torch.autograd.grad(y, tensors, grad_out)
    check(y.detach(), grads, index, tensors, activation, grad_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["sin", "relu"])
def test_cpp_backward_sums_the_gradients_of_several_chunks(activation, dtype):
    """700 kernels are three 256-row blocks: with three threads each chunk of blocks has its own
    accumulator, added into the returned gradients at the end."""
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        index, tensors = make_inputs(700, 16, 2, 9, dtype=dtype, activation=activation)
        y = hyperkd.functional.siren_decode(index, tensors[:3], *tensors[3:], activation=activation)
        grad_out = torch.randn(y.shape, dtype=dtype)
        grads = torch.autograd.grad(y, tensors, grad_out)
    finally:
        torch.set_num_threads(threads)
    check(y.detach(), grads, index, tensors, activation, grad_out)


@pytest.mark.parametrize("hidden", [0, 2])
def test_cpp_sine_backward_beyond_the_fast_reduction_range(hidden):
    """First-layer pre-activations up to ±3e7, past kFastTrigBound (8192) and past where the fast
    reduction's rounding trick holds (|x|·2/π < 2²²), take std::sin/cos in the backward's fp32
    sincos passes; T_f = T_c = 0 keeps z₀ exactly T_ℓ's entries on both sides."""
    index, tensors = make_inputs(40, 16, hidden, 9)
    with torch.no_grad():
        tensors[0].copy_(torch.linspace(-3e7, 3e7, tensors[0].numel()).view_as(tensors[0]))
        tensors[1].zero_()
        tensors[2].zero_()
    y, saved = torch.ops.hyperkd.siren_decode(index, *tensors, ACT["sin"], True)
    assert saved[0].abs().amax() > 8192
    grad_out = torch.randn(y.shape)
    grads = torch.autograd.grad(y, tensors, grad_out)
    check(y.detach(), grads, index, tensors, "sin", grad_out)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("save", [False, True], ids=["recompute", "stored"])
@pytest.mark.parametrize("n,width,hidden,out,activation",
                         [(37, 16, 2, 9, "sin"), (20, 12, 1, 9, "relu"), (9, 16, 0, 9, "sin")])
def test_triton_matches_reference(n, width, hidden, out, activation, save, dtype, triton_device):
    index, tensors = make_inputs(n, width, hidden, out, dtype=dtype, activation=activation)
    plain = [t.detach().to(triton_device) for t in tensors]
    y, saved = triton_decode.siren_decode(index.to(triton_device), *plain, ACT[activation], save)
    # On a GPU tl.dot multiplies fp32 in TF32, whose eps (2^-10) is fp16's.
    eps = 2.0 ** -10 if triton_device.type == "cuda" else None
    if save:
        check_pre_activations(saved.cpu(), index, tensors, activation, eps)
    grad_out = torch.randn(y.shape, dtype=dtype)
    grads = triton_decode.siren_decode_backward(grad_out.to(triton_device), index.to(triton_device),
                                                *plain, ACT[activation], saved)
    check(y.cpu(), [g.cpu() for g in grads], index, tensors, activation, grad_out, eps)


@pytest.mark.interpret
@pytest.mark.parametrize("hidden", [2, 0])
@pytest.mark.parametrize("width", [16, siren_ops.FUSED_MAX_WIDTH + 32])
def test_cuda_path_is_fused_up_to_its_width_and_a_gemm_chain_beyond(width, hidden, monkeypatch):
    """The CUDA registrations, called on CPU tensors (Triton under the interpreter)."""
    fused_calls = []
    for name in ("siren_decode", "siren_decode_backward"):
        launcher = getattr(triton_decode, name)
        monkeypatch.setattr(triton_decode, name,
                            lambda *a, _f=launcher, _n=name: fused_calls.append(_n) or _f(*a))
    index, tensors = make_inputs(23, width, hidden, 9, activation="sin")
    plain = [t.detach() for t in tensors]
    y, saved = siren_ops.decode_cuda(index, *plain, ACT["sin"], True)
    check_pre_activations(saved, index, plain, "sin")
    grad_out = torch.randn(y.shape)
    grads = siren_ops.decode_backward_cuda(grad_out, index, *plain, ACT["sin"], saved)
    check(y, grads, index, tensors, "sin", grad_out)
    fused = width <= siren_ops.FUSED_MAX_WIDTH
    assert fused_calls == (["siren_decode", "siren_decode_backward"] if fused else [])


@pytest.mark.parametrize("save", [False, True], ids=["recompute", "stored"])
@pytest.mark.parametrize("hidden,activation", [(2, "sin"), (1, "relu"), (0, "sin")])
def test_wide_gemm_chain_matches_cpp_in_fp64(hidden, activation, save):
    """The CUDA path above FUSED_MAX_WIDTH, run on CPU tensors, against the C++ kernels: two
    independent implementations, values, stored pre-activations and gradients."""
    width = siren_ops.FUSED_MAX_WIDTH + 32
    index, tensors = make_inputs(23, width, hidden, 9, dtype=torch.float64, activation=activation)
    plain = [t.detach() for t in tensors]
    y, saved = siren_ops.decode_cuda(index, *plain, ACT[activation], save)
    want, want_saved = torch.ops.hyperkd.siren_decode(index, *plain, ACT[activation], save)
    assert saved.shape == want_saved.shape
    assert_within_rounding(y, want, torch.float64, width, "values")
    assert_within_rounding(saved, want_saved, torch.float64, width, "pre-activations")
    grad_out = torch.randn(y.shape, dtype=torch.float64)
    grads = siren_ops.decode_backward_cuda(grad_out, index, *plain, ACT[activation], saved)
    want_grads = torch.ops.hyperkd.siren_decode_backward(grad_out, index, *plain, ACT[activation],
                                                         want_saved)
    for name, got, expected in zip(GRAD_NAMES, grads, want_grads):
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        assert_within_rounding(got, expected, torch.float64, width, name)


@pytest.mark.parametrize("save", [False, True], ids=["recompute", "stored"])
@pytest.mark.parametrize("activation", ["sin", "relu"])
def test_fp64_gradcheck(activation, save):
    index, tensors = make_inputs(6, 4, 2, 4, dtype=torch.float64, activation=activation)
    assert torch.autograd.gradcheck(
        lambda *t: torch.ops.hyperkd.siren_decode(index, *t, ACT[activation], save)[0], tensors)


@pytest.mark.parametrize("save", [False, True], ids=["recompute", "stored"])
def test_opcheck(save):
    index, tensors = make_inputs(9, 8, 2, 9)
    torch.library.opcheck(torch.ops.hyperkd.siren_decode.default, (index, *tensors, 1, save))


def test_functional_stores_pre_activations_only_for_gradients_within_the_limit(monkeypatch):
    index, tensors = make_inputs(9, 8, 2, 9)
    saves = []
    op = torch.ops.hyperkd.siren_decode
    monkeypatch.setattr(torch.ops.hyperkd, "siren_decode",
                        type("Op", (), {"__call__": lambda _, *a: saves.append(a[-1]) or op(*a)})())
    decode = lambda: hyperkd.functional.siren_decode(index, tensors[:3], *tensors[3:])
    decode()
    with torch.no_grad():
        decode()
    monkeypatch.setattr(siren_ops, "SAVE_LIMIT_BYTES", 3 * 9 * 8 * 4 - 1)  # one float short
    decode()
    assert saves == [True, False, False]


def test_compile_fullgraph_forward_and_backward():
    index, tensors = make_inputs(11, 8, 2, 9)
    fn = torch.compile(lambda *t: hyperkd.functional.siren_decode(index, t[:3], *t[3:]).square().sum(),
                       fullgraph=True, backend="aot_eager")
    loss = fn(*tensors)
    grads = torch.autograd.grad(loss, tensors)
    eager = torch.ops.hyperkd.siren_decode(index, *tensors, 1)[0].square().sum()
    assert_within_rounding(loss.detach(), eager.detach(), torch.float32, 8, "loss")
    for name, got, want in zip(GRAD_NAMES, grads, torch.autograd.grad(eager, tensors)):
        assert_within_rounding(got, want, torch.float32, 8, name)


def test_functional_wrapper_checks_arguments():
    index, tensors = make_inputs(4, 8, 1, 9)
    tables, rest = tensors[:3], tensors[3:]
    with pytest.raises(ValueError, match="activation"):
        hyperkd.functional.siren_decode(index, tables, *rest, activation="tanh")
    with pytest.raises(ValueError, match="index"):
        hyperkd.functional.siren_decode(index.int(), tables, *rest)
    with pytest.raises(ValueError, match="tables"):
        hyperkd.functional.siren_decode(index, tables[:2], *rest)
    with pytest.raises(ValueError, match="hidden_weight"):
        hyperkd.functional.siren_decode(index, tables, rest[0][:, :4], *rest[1:])


def test_cpu_kernel_rejects_coordinates_outside_the_tables():
    index, tensors = make_inputs(4, 8, 1, 9)
    index[2, 1] = 7  # the filter table has 7 rows
    with pytest.raises(RuntimeError, match=r"index: filter indices must lie in \[0, 7\), got \[\d+, 7\]"):
        torch.ops.hyperkd.siren_decode(index, *tensors, 1)


def test_cpu_backward_rejects_pre_activations_of_another_shape():
    index, tensors = make_inputs(4, 8, 1, 9)
    plain = [t.detach() for t in tensors]
    with pytest.raises(RuntimeError, match=r"pre_activations: expected \(NH\+1\)×N×H = 2×4×8"):
        torch.ops.hyperkd.siren_decode_backward(torch.ones(4, 9), index, *plain, 1, torch.zeros(2, 3, 8))


@pytest.mark.gpu
@pytest.mark.parametrize("width", [64, siren_ops.FUSED_MAX_WIDTH + 32], ids=["fused", "gemm-chain"])
@pytest.mark.parametrize("activation", ["sin", "relu"])
def test_cuda_matches_reference(activation, width):
    index, tensors = make_inputs(4096, width, 3, 9, activation=activation)
    cuda = [t.detach().cuda().requires_grad_() for t in tensors]
    y = hyperkd.functional.siren_decode(index.cuda(), cuda[:3], *cuda[3:], activation=activation)
    grad_out = torch.randn(y.shape, device="cuda")
    grads = torch.autograd.grad(y, cuda, grad_out)
    # Triton's tl.dot multiplies fp32 in TF32 (10-bit mantissa); cuBLAS does when torch allows it.
    tf32 = width <= siren_ops.FUSED_MAX_WIDTH or torch.backends.cuda.matmul.allow_tf32
    check(y.detach().cpu(), [g.cpu() for g in grads], index, tensors, activation, grad_out.cpu(),
          eps=2.0 ** -10 if tf32 else None)
