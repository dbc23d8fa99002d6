"""Parity of the fused affinity ops (mAKD Eq. 3–14) with the eager reference, on every backend."""
import itertools

import pytest
import torch

import hyperkd
from hyperkd.ops import affinity as aff_ops
from hyperkd.reference import affinity as R
from tests.kd.op_checks import assert_compiled_matches_eager, saved_tensor_shapes
from tests.tolerances import assert_close

F = hyperkd.functional
VARIANTS = list(itertools.product(R.AFFINITIES, R.NORMALISATIONS, R.LOSSES))
# Every affinity, normalisation and loss at least once, for the costlier checks.
COVERING = [("l1", "l1", "l1"), ("l2", "l2", "l2"), ("ip", "avg", "sl1"), ("cs", "max", "kl"),
            ("ip", "none", "kl"), ("l1", "max", "sl1"), ("l2", "avg", "kl"), ("cs", "none", "l1")]


def features(batch, widths, dtype=torch.float64, ties=False):
    """Student (requiring grad) and teacher features of several layers, of unit norm per sample on
    average (so inner products stay O(1) and no row softmax saturates: KL's p_s − p_t of two
    saturated rows has no relative accuracy left in fp32); ``ties`` zeroes a few columns of both,
    as ReLU features have (equal entries: sign 0 in the L1 gradient)."""
    student, teacher = [], []
    for shape in widths:
        width = torch.Size(shape).numel() ** 0.5
        s, t = (torch.randn(batch, *shape, dtype=dtype) / width for _ in range(2))
        if ties:
            s.view(batch, -1)[:, :2] = 0
            t.view(batch, -1)[:, :2] = 0
        student.append(s.requires_grad_())
        teacher.append(t)
    return student, teacher


def reference_terms_and_grads(student, teacher, variant, weights):
    acc = torch.float64 if student[0].dtype == torch.float64 else torch.float32
    s = [f.detach().to(acc).requires_grad_() for f in student]
    terms = R.makd_losses(s, [t.to(acc) for t in teacher], *variant)
    return terms.detach(), torch.autograd.grad((weights.to(acc) * terms).sum(), s)


def term_scale(ref_terms, summaries, variant):
    """The magnitude a term's rounding error follows: the term itself for the regression losses
    (sums of non-negative parts), the logits for KL, whose value is a difference of log-softmaxes
    of that size (nearly equal one-hot rows give a tiny KL carrying the logits' rounding)."""
    scale = float(ref_terms.abs().max())
    if variant[2] == "kl":
        scale = max(scale, max(float(t.abs().max()) for t in summaries))
    return scale


def check_fused(student, teacher, variant, dtype):
    weights = torch.linspace(0.5, 1.5, len(student), dtype=torch.float64)
    summaries = F.affinity_teacher_summary(teacher, *variant[:2])
    terms = F.affinity_losses(student, summaries, *variant)
    ref_terms, ref_grads = reference_terms_and_grads(student, teacher, variant, weights)
    assert_close(terms, ref_terms, dtype, scale=term_scale(ref_terms, summaries, variant), msg=f"{variant} terms")
    grads = torch.autograd.grad((weights.to(terms.dtype) * terms).sum(), student)
    # Each gradient entry goes through sums over the B² matrix entries (the matrix normalisations'
    # ⟨dÃ, Ã⟩, the L1 sign sums): its rounding error grows as sqrt(B²) = B times one entry's.
    batch = student[0].shape[0]
    for g, r, s in zip(grads, ref_grads, student):
        assert g.dtype == s.dtype and g.shape == s.shape
        assert_close(g, r, dtype, scale=batch * float(r.abs().max()) + 1e-30, msg=f"{variant} grad")


@pytest.mark.parametrize("variant", VARIANTS, ids="-".join)
def test_cpp_matches_reference_fp64(variant):
    student, teacher = features(6, [(3, 2, 2), (7,)], ties=True)
    check_fused(student, teacher, variant, torch.float64)


@pytest.mark.parametrize("variant", COVERING, ids="-".join)
def test_cpp_matches_reference_fp32_past_tile_edges(variant):
    """B = 11 and D = 37 leave partial register tiles and vectors in every kernel."""
    student, teacher = features(11, [(37,), (4, 3, 3)], dtype=torch.float32)
    check_fused(student, teacher, variant, torch.float32)


@pytest.mark.parametrize("variant", [("l2", "l1", "sl1"), ("cs", "max", "kl"), ("ip", "none", "l2")], ids="-".join)
def test_cpp_matches_reference_fp32_wide_layers(variant):
    """A layer of D ≥ 256 takes the Gram kernel that splits D (gram.h) rather than the product
    by Qᵀ of narrow layers."""
    student, teacher = features(11, [(300,), (37,)], dtype=torch.float32)
    check_fused(student, teacher, variant, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("variant", [("ip", "none", "l2"), ("cs", "l2", "sl1"), ("l2", "avg", "kl")], ids="-".join)
def test_cpp_matches_reference_large_batches(variant, dtype):
    """From B = 256 the Gram of a wide layer is cut into blocks of 64 rows, the diagonal ones tiled
    and the rest products by BLAS (gram.h); B = 259 leaves a partial last block."""
    student, teacher = features(259, [(300,)], dtype=dtype)
    check_fused(student, teacher, variant, dtype)


@pytest.mark.parametrize("variant", [("ip", "l2", "l2"), ("l2", "max", "l1")], ids="-".join)
def test_cpp_matches_reference_fp32_rows_split_across_threads(variant):
    """B²·D above 2^22 at a narrow width: the threads split the Gram's rows (136 = 128 + 8)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        student, teacher = features(136, [(240,)], dtype=torch.float32)
        check_fused(student, teacher, variant, torch.float32)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpp_half_precision_inputs(dtype):
    """Inputs are rounded to ``dtype`` once; the op accumulates in fp32 and returns fp32 terms
    and gradients in ``dtype``, compared with the reference on the same rounded inputs."""
    student, teacher = features(8, [(16,)], dtype=dtype)
    check_fused(student, teacher, ("cs", "l2", "sl1"), dtype)


def test_teacher_summary_matches_reference():
    _, teacher = features(9, [(5, 2, 2)])
    for aff, norm in itertools.product(R.AFFINITIES, R.NORMALISATIONS):
        assert_close(F.affinity_teacher_summary(teacher[0], aff, norm),
                     R.normalised_affinity(teacher[0], aff, norm), torch.float64)


@pytest.mark.parametrize("variant", COVERING, ids="-".join)
def test_gradcheck_fp64(variant):
    student, teacher = features(5, [(6,), (2, 2, 2)])
    summaries = F.affinity_teacher_summary(teacher, *variant[:2])

    def fn(a, b):
        return (F.affinity_losses([a, b], summaries, *variant) * torch.tensor([0.7, 1.3], dtype=a.dtype)).sum()

    assert torch.autograd.gradcheck(fn, tuple(student), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", [("l1", "avg", "kl"), ("cs", "l2", "sl1")], ids="-".join)
def test_opcheck(variant):
    student, teacher = features(4, [(6,), (3,)])
    rows = [s.reshape(4, -1) for s in student]
    summaries = F.affinity_teacher_summary(teacher, *variant[:2])
    torch.library.opcheck(torch.ops.hyperkd.affinity_loss, (rows, summaries, *variant))
    torch.library.opcheck(torch.ops.hyperkd.affinity_loss_with_grad, ([r.detach() for r in rows], summaries, *variant))
    torch.library.opcheck(torch.ops.hyperkd.affinity, ([t.reshape(4, -1) for t in teacher], *variant[:2]))


def test_compiles_without_graph_breaks():
    student, teacher = features(6, [(4, 2, 2)], dtype=torch.float32)
    summaries = F.affinity_teacher_summary(teacher, "cs", "l2")
    assert_compiled_matches_eager(lambda s: F.affinity_losses([s], summaries, "cs", "l2", "sl1").sum(),
                                  (student[0],), student)


def test_saves_no_batch_by_batch_by_feature_tensor():
    """Backward keeps only the feature gradient that forward computed: nothing of size B×B×D,
    which the eager L1 path of autograd would need."""
    student, teacher = features(8, [(32,)], dtype=torch.float32)
    summaries = F.affinity_teacher_summary(teacher, "l1", "l2")
    shapes = saved_tensor_shapes(lambda: F.affinity_losses(student, summaries, "l1", "l2", "sl1"))
    assert shapes == [(8, 32)]


def test_gradient_scales_with_the_incoming_gradient():
    student, teacher = features(5, [(6,)])
    summaries = F.affinity_teacher_summary(teacher, "l2", "avg")
    terms = F.affinity_losses(student, summaries, "l2", "avg", "sl1")
    (g1,) = torch.autograd.grad(terms.sum(), student, retain_graph=True)
    (g3,) = torch.autograd.grad(3 * terms.sum(), student, retain_graph=True)
    assert_close(g3, 3 * g1, torch.float64)
    # The gradient kept from forward is handed out again unchanged (GNoRP backpropagates twice).
    (again,) = torch.autograd.grad(terms.sum(), student)
    assert torch.equal(again, g1)


def test_batch_of_one_and_bad_components_are_errors():
    student, teacher = features(1, [(6,)])
    with pytest.raises(ValueError, match="batch of 1"):
        F.affinity_loss(student, teacher, "cs", "l2", "sl1")
    student, teacher = features(3, [(6,)])
    with pytest.raises(ValueError, match="aff: expected one of l1, l2, ip, cs, got 'cos'"):
        F.affinity_loss(student, teacher, "cos", "l2", "sl1")
    with pytest.raises(ValueError, match="norm: expected one of l1, l2, avg, max, none"):
        F.affinity_teacher_summary(teacher, "cs", "mean")
    with pytest.raises(ValueError, match="teacher_summaries\\[0\\]: expected a 3×3 matrix"):
        F.affinity_losses(student, teacher, "cs", "l2", "sl1")


# ---------------------------------------------------------------- Triton (interpreter on the CPU)

def triton_terms_and_grads(student, summaries, variant):
    rows = [s.detach().reshape(s.shape[0], -1) for s in student]
    terms, _, grads = aff_ops._loss_with_grad_cuda(rows, summaries, *variant)
    return terms, [g.reshape(s.shape) for g, s in zip(grads, student)]


@pytest.mark.interpret
@pytest.mark.parametrize("variant", [("l1", "l2", "sl1"), ("l2", "avg", "l2"), ("ip", "max", "l1"),
                                     ("cs", "l1", "kl")], ids="-".join)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_interpreter_matches_reference(variant, dtype):
    student, teacher = features(5, [(20,), (3, 2, 2)], dtype=dtype, ties=True)
    summaries = [R.normalised_affinity(t, *variant[:2]) for t in teacher]
    terms, grads = triton_terms_and_grads(student, summaries, variant)
    ref_terms, ref_grads = reference_terms_and_grads(student, teacher, variant, torch.ones(2))
    assert_close(terms, ref_terms, dtype, scale=term_scale(ref_terms, summaries, variant))
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert_close(g, r, dtype, scale=float(r.abs().max()))


@pytest.mark.interpret
def test_triton_interpreter_teacher_summary():
    _, teacher = features(6, [(9,)], dtype=torch.float32)
    rows = [teacher[0]]
    for aff in R.AFFINITIES:
        (got,) = aff_ops._affinity_cuda(rows, aff, "l2")
        assert_close(got, R.normalised_affinity(teacher[0], aff, "l2"), torch.float32)
