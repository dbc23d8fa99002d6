"""Parity of every JSD map loss backend with the eager reference (layer-wise LR §3.4, Eq. 8–10),
and the properties of the divergence: symmetric, zero for equal maps, at most ln 2."""
import math

import pytest
import torch

from hyperkd.kernels import jsd_map as triton_jsd
from hyperkd.ops import jsd_map as ops
from hyperkd.reference import jsd_map as reference
from tests.kd.op_checks import assert_compiled_matches_eager, saved_tensor_shapes
from tests.tolerances import assert_close

P_NORMALISE = [(1.0, "abs"), (2.0, "abs"), (1.5, "abs"), (2.0, "softmax"), (1.0, "softmax")]
# Feature maps (C, H, W) and one Jacobian-like B×N map of an odd length.
SHAPES = [(3, 7, 7), (5, 4, 6), (37,)]
LOG_EPS = abs(math.log(ops.EPS))


def make_pairs(shapes, batch, dtype=torch.float32):
    student = [torch.randn(batch, *s, dtype=dtype).requires_grad_() for s in shapes]
    teacher = [torch.randn(batch, *s, dtype=dtype) for s in shapes]
    return student, teacher


def reference_loss_and_grads(student, teacher, p, normalise, reduction, lambdas):
    """The oracle in fp64 from the same input values: the kernels' own rounding is what is tested."""
    s = [f.detach().double().requires_grad_() for f in student]
    loss = reference.jsd_map_loss(s, [t.double() for t in teacher], p=p, softmax=normalise == "softmax",
                                  lambdas=lambdas, reduction=reduction)
    return loss.detach(), torch.autograd.grad(loss, s)


def cpp_loss_and_grads(student, teacher, p, normalise, reduction, lambdas):
    loss = ops.jsd_map_loss(student, teacher, p=p, normalise=normalise, reduction=reduction, lambdas=lambdas)
    return loss.detach(), torch.autograd.grad(loss, student)


def triton_loss_and_grads(student, teacher, p, normalise, reduction, lambdas, eps=ops.EPS):
    """The Triton launchers called directly (CPU tensors under TRITON_INTERPRET=1, or CUDA)."""
    as4d = [f.detach()[:, None, None, :] if f.dim() == 2 else f.detach() for f in student]
    t4d = [t[:, None, None, :] if t.dim() == 2 else t for t in teacher]
    softmax = normalise == "softmax"
    summaries = triton_jsd.jsd_map_summary(t4d, p, softmax, eps)
    lam = torch.tensor(lambdas or [1.0] * len(as4d), dtype=torch.float32, device=as4d[0].device)
    loss, _, grads = triton_jsd.jsd_map_loss(as4d, summaries, lam, p, softmax, eps, reduction == "mean", True)
    return loss, [g.reshape(f.shape) for g, f in zip(grads, student)]


def check_backend(backend, student, teacher, p, normalise, reduction="mean", lambdas=None):
    dtype = student[0].dtype
    loss, grads = backend(student, teacher, p, normalise, reduction, lambdas)
    ref_loss, ref_grads = reference_loss_and_grads(student, teacher, p, normalise, reduction, lambdas)
    assert torch.isfinite(loss)
    assert_close(loss.cpu(), ref_loss.cpu(), dtype, msg="loss")
    for m, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g.dtype == dtype and g.shape == r.shape
        # dJ/dP holds log(P + ε) − log(M + ε), terms up to |ln ε| ≈ 18 whose difference is rounded
        # at their magnitude: the gradient's error floor is |ln ε| times its scale's rounding.
        scale = (float(r.abs().max()) + 1e-12) * LOG_EPS
        assert_close(g.cpu(), r.cpu(), dtype, scale=scale, msg=f"grad {m}")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("p,normalise", P_NORMALISE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_matches_reference(p, normalise, reduction, dtype):
    student, teacher = make_pairs(SHAPES, batch=3, dtype=dtype)
    check_backend(cpp_loss_and_grads, student, teacher, p, normalise, reduction, lambdas=[0.5, 1.0, 2.0])


def test_cpp_half_precision_matches_reference():
    for dtype in (torch.float16, torch.bfloat16):
        student, teacher = make_pairs(SHAPES[:2], batch=2, dtype=dtype)
        check_backend(cpp_loss_and_grads, student, teacher, 2.0, "abs")


@pytest.mark.parametrize("p,normalise", [(1.0, "abs"), (2.0, "abs"), (1.5, "softmax")])
def test_cpp_gradcheck_fp64(p, normalise):
    student, teacher = make_pairs([(3, 4, 5), (11,)], batch=2, dtype=torch.float64)

    def fn(a, b):
        return ops.jsd_map_loss([a, b], teacher, p=p, normalise=normalise, lambdas=[0.7, 1.3])

    assert torch.autograd.gradcheck(fn, tuple(student), eps=1e-6, atol=1e-6)


@pytest.mark.interpret
@pytest.mark.parametrize("p,normalise", P_NORMALISE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_interpreter_matches_reference(p, normalise, dtype):
    student, teacher = make_pairs(SHAPES, batch=2, dtype=dtype)
    check_backend(triton_loss_and_grads, student, teacher, p, normalise, "mean", lambdas=[0.5, 2.0, 1.0])


@pytest.mark.interpret
def test_triton_interpreter_sum_and_long_rows():
    # A 300-element map spans two 256-wide blocks.
    student, teacher = make_pairs([(2, 15, 20), (300,)], batch=2)
    check_backend(triton_loss_and_grads, student, teacher, 2.0, "abs", "sum")


def test_symmetric_zero_for_equal_maps_and_bounded_by_ln2():
    torch.manual_seed(0)
    p = reference.to_distribution(torch.rand(64, 50))
    q = reference.to_distribution(torch.rand(64, 50))
    both = ops.jsd_map_terms([p], [q], kind=0, reduction="sum")[1]
    swapped = ops.jsd_map_terms([q], [p], kind=0, reduction="sum")[1]
    assert_close(both, swapped, torch.float32)
    assert float(ops.jsd_map_loss([p], [p], kind=0)) == pytest.approx(0.0, abs=1e-7)
    # Disjoint supports attain the bound ln 2 (up to the ε floor).
    a, b = torch.zeros(4, 10), torch.zeros(4, 10)
    a[:, :5], b[:, 5:] = 1.0, 1.0
    disjoint = float(ops.jsd_map_loss([a], [b], kind=0))
    assert disjoint == pytest.approx(math.log(2), rel=1e-5)
    rows = ops.jsd_map_terms([torch.randn(256, 20)], [torch.randn(256, 20)], kind=0, reduction="mean")[1]
    assert 0.0 < float(rows) <= math.log(2)


def test_zero_map_uses_the_clamped_normaliser():
    student, teacher = make_pairs([(2, 3, 3)], batch=2, dtype=torch.float64)
    zero = [torch.zeros_like(student[0]).requires_grad_()]
    check_backend(cpp_loss_and_grads, zero, teacher, 1.0, "abs")


def test_teacher_summary_matches_reference_and_raw_teacher():
    student, teacher = make_pairs(SHAPES, batch=2)
    summaries = ops.jsd_map_teacher_summary(teacher, p=2.0)
    for s, t in zip(summaries, teacher):
        assert_close(s, reference.jsd_map_summary(t, 2.0), torch.float32)
    from_summary = ops.jsd_map_loss(student, summaries, teacher_summarised=True)
    assert_close(from_summary, ops.jsd_map_loss(student, teacher), torch.float32)


def test_saves_only_the_gradients_it_returns():
    student, teacher = make_pairs(SHAPES[:2], batch=2)
    summaries = ops.jsd_map_teacher_summary(teacher)
    shapes = saved_tensor_shapes(lambda: ops.jsd_map_loss(student, summaries, teacher_summarised=True))
    assert sorted(shapes) == sorted(tuple(f.shape) for f in student)


def test_gradients_follow_the_incoming_gradient():
    student, teacher = make_pairs(SHAPES[:2], batch=2, dtype=torch.float64)
    loss = ops.jsd_map_loss(student, teacher)
    g1 = torch.autograd.grad(3.0 * loss, student)
    _, ref = reference_loss_and_grads(student, teacher, 2.0, "abs", "mean", None)
    for a, r in zip(g1, ref):
        assert_close(a, 3.0 * r, torch.float64)


def test_opcheck_cpu():
    student, teacher = make_pairs([(3, 5, 5), (4, 3, 3)], batch=2, dtype=torch.float64)
    summaries = ops.jsd_map_teacher_summary(teacher, p=2.0)
    lam = torch.tensor([1.0, 0.5], dtype=torch.float64)
    torch.library.opcheck(torch.ops.hyperkd.jsd_map_loss, (student, summaries, lam, 2.0, False, 1e-8, True, True))
    torch.library.opcheck(torch.ops.hyperkd.jsd_map_loss,
                          ([f.detach() for f in student], summaries, lam, 1.5, True, 1e-8, False, False))
    torch.library.opcheck(torch.ops.hyperkd.jsd_map_summary, ([t for t in teacher], 2.0, False, 1e-8))


def test_torch_compile_fullgraph_forward_and_backward():
    student, teacher = make_pairs([(3, 5, 5), (4, 3, 3)], batch=2)

    def step(a, b, ta, tb):
        return ops.jsd_map_loss([a, b], [ta, tb], p=2.0, normalise="softmax")

    assert_compiled_matches_eager(step, (*student, *teacher), student)


def test_module_form_matches_functional():
    student, teacher = make_pairs(SHAPES, batch=2)
    module = ops.JSDMapLoss(kind=0, normalise="softmax", reduction="sum")
    assert_close(module(student, teacher, lambdas=[1.0, 2.0, 0.5]),
                 ops.jsd_map_loss(student, teacher, kind=0, normalise="softmax", reduction="sum",
                                  lambdas=[1.0, 2.0, 0.5]), torch.float32)


@pytest.mark.parametrize("overrides, error, message", [
    (dict(kind=2), ValueError, "kind: expected 0"),
    (dict(p=0.0), ValueError, "p: expected p > 0"),
    (dict(normalise="l2"), ValueError, "normalise: expected one of"),
    (dict(reduction="max"), ValueError, "reduction: expected one of"),
    (dict(eps=-1.0), ValueError, "eps: expected eps > 0"),
])
def test_bad_options_name_the_argument(overrides, error, message):
    student, teacher = make_pairs(SHAPES[:1], batch=2)
    with pytest.raises(error, match=message):
        ops.jsd_map_loss(student, teacher, **overrides)


def test_bad_shapes_name_the_layer():
    student, teacher = make_pairs([(3, 4, 4)], batch=2)
    with pytest.raises(ValueError, match=r"layer 0: student shape \(2, 3, 4, 4\) and teacher shape"):
        ops.jsd_map_loss(student, [torch.randn(2, 3, 4, 5)])
    with pytest.raises(ValueError, match=r"teacher\[0\]: expected a distribution of shape \(2, 16\)"):
        ops.jsd_map_loss(student, [torch.rand(2, 15)], teacher_summarised=True)
    with pytest.raises(ValueError, match=r"student\[0\]: expected a B×C×H×W feature or a B×N map"):
        ops.jsd_map_loss([torch.randn(2, 3, 4)], [torch.randn(2, 3, 4)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("p,normalise", P_NORMALISE)
def test_triton_gpu_matches_reference(p, normalise):
    student, teacher = make_pairs([(64, 32, 32), (128, 16, 16), (9 * 64 * 128,)], batch=8)
    student = [f.detach().cuda().requires_grad_() for f in student]
    teacher = [t.cuda() for t in teacher]
    check_backend(cpp_loss_and_grads, student, teacher, p, normalise)
