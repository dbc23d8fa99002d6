"""Fused SP and RKD (Eq. 14–18, 22–27): C++ and the CUDA path (Triton under the interpreter) against
the naive eager references, gradients, opcheck, compile, memory discipline and bad input."""
import pytest
import torch

import hyperkd.kd as kd
from hyperkd import reference as R
from hyperkd.ops import relational as rel
from tests.kd.features import feature_pair
from tests.kd.op_checks import (assert_compiled_matches_eager, assert_terms_and_grads_match,
                                 saved_tensor_shapes)
from tests.tolerances import assert_close, loss_dtype

SHAPES = [(5, 3, 4, 4), (5, 2, 3, 3), (5, 7, 1, 2)]
RKD_WEIGHTS = {"rkd-d": (1.0, 0.0), "rkd-a": (0.0, 1.0), "rkd-da": (0.5, 0.5)}


def _reference(student, teacher, method):
    ref_student = [s.detach().double().requires_grad_() for s in student]
    ref_teacher = [t.double() for t in teacher]
    if method == "sp":
        terms = R.similarity_preserving_losses(ref_student, ref_teacher)
    else:
        terms = R.rkd_losses(ref_student, ref_teacher, *RKD_WEIGHTS[method])
    weights = torch.arange(1, len(student) + 1, dtype=torch.float64)
    return terms.detach(), torch.autograd.grad((weights * terms).sum(), ref_student), weights


def _fused(student, teacher, method):
    if method == "sp":
        return rel.similarity_preserving_losses(student, teacher)
    w_dist, w_angle = RKD_WEIGHTS[method]
    return rel.rkd_losses(student, teacher, w_dist=w_dist, w_angle=w_angle)


@pytest.mark.parametrize("method", ["sp", "rkd-d", "rkd-a", "rkd-da"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_matches_reference(method, dtype):
    student, teacher = feature_pair(SHAPES, dtype, channels_last_layer=1)
    terms = _fused(student, teacher, method)
    ref_terms, ref_grads, weights = _reference(student, teacher, method)
    # Gradients are sums over B² (B³ for angles) Gram entries, each of magnitude ~1/B².
    assert_terms_and_grads_match(terms, ref_terms, ref_grads, weights, student, dtype)


@pytest.mark.parametrize("method", ["sp", "rkd-da"])
def test_batch_of_two(method):
    student, teacher = feature_pair([(2, 3, 2, 2)], torch.float64)
    assert_close(_fused(student, teacher, method), _reference(student, teacher, method)[0], torch.float64)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("method", ["sp", "rkd-da"])
def test_cuda_path_matches_reference(method, dtype, triton_device):
    student, teacher = feature_pair([(4, 3, 3, 5), (4, 2, 2, 2)], dtype, channels_last_layer=1,
                                    requires_grad=False)
    ref_terms, ref_grads, weights = _reference(student, teacher, method)
    student, teacher = [s.to(triton_device) for s in student], [t.to(triton_device) for t in teacher]
    weights = weights.to(triton_device)
    if method == "sp":
        summaries = [torch.nn.functional.normalize(g, dim=1, eps=1e-12) for g in rel.triton_rel.gram(teacher)]
        terms, grams = rel._sp_loss_cuda(student, summaries)
        grads = rel._sp_loss_backward_cuda(weights.float(), student, summaries, grams)
    else:
        summaries = rel.triton_rel.gram(teacher)
        terms, grams = rel._rkd_loss_cuda(student, summaries, 0.5, 0.5)
        grads = rel._rkd_loss_backward_cuda(weights.float(), student, summaries, grams, 0.5, 0.5)
    assert terms.dtype == loss_dtype(dtype)
    assert_close(terms.cpu(), ref_terms, loss_dtype(dtype))
    for g, s, r in zip(grads, student, ref_grads):
        assert g.dtype == dtype and g.stride() == s.stride()
        assert_close(g.cpu(), r, dtype)


# Batch sizes off the Gram kernel's 3×4 tiles and the backward's 6-row blocks; widths off its
# vector width, its column panels (2000 at B = 13 spans several) and the threads' shares of D, on
# both sides of the 4 KiB row stride where the backward's products walk row tiles first; B = 32,
# D = 9000 walks each thread's share in several of the Gram's L2 chunks, in both dtypes; from
# B = 256 the Gram's off-diagonal blocks of 64 rows are BLAS products (259: a partial last block).
KERNEL_EDGES = [(2, 1), (7, 9), (13, 50), (13, 2000), (18, 517), (32, 9000), (259, 300)]


@pytest.mark.parametrize("B,D", KERNEL_EDGES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_gram_kernels_at_tile_edges(B, D, dtype):
    student, teacher = feature_pair([(B, D, 1, 1), (B, 1, 1, D)], dtype, channels_last_layer=0)
    for g, f in zip(rel.gram(student), student):
        q = f.detach().double().reshape(B, -1)  # the Gram does not depend on the order along D
        # An entry of a Gram of unit-variance features is a sum of D products, of magnitude √D.
        assert_close(g, q @ q.t(), dtype, scale=D ** 0.5)
    terms = rel.similarity_preserving_losses(student, teacher)
    ref_terms, ref_grads, weights = _reference(student, teacher, "sp")
    # With 1×1 spatial sizes, channels_last and contiguous are the same memory under different
    # strides, so strides say nothing here.
    assert_terms_and_grads_match(terms, ref_terms, ref_grads, weights, student, dtype,
                                 same_strides=False)


@pytest.mark.interpret
def test_triton_gram_matches_matmul():
    feats = [torch.randn(3, 5, 3, 3), torch.randn(3, 2, 4, 1).to(memory_format=torch.channels_last)]
    for g, f in zip(rel.triton_rel.gram(feats), feats):
        q = f.reshape(3, -1)
        assert_close(g, q @ q.t(), torch.float32, scale=10.0)


@pytest.mark.parametrize("method", ["sp", "rkd-da"])
def test_gradcheck_fp64(method):
    student, teacher = feature_pair([(4, 2, 2, 2), (4, 3, 1, 2)], torch.float64)
    summaries = [kd.make_method(method).summarise(t, m) for m, t in enumerate(teacher)]
    fn = (lambda a, b: rel.similarity_preserving_losses([a, b], summaries)) if method == "sp" else \
        (lambda a, b: rel.rkd_losses([a, b], summaries, w_dist=0.5, w_angle=0.5))
    assert torch.autograd.gradcheck(fn, tuple(student))


def test_opcheck():
    student, teacher = feature_pair(SHAPES, torch.float32)
    grams = rel.gram(teacher)
    sp_teacher = rel.similarity_teacher_summary(teacher)
    grad = torch.rand(len(student))
    detached = [s.detach() for s in student]
    torch.library.opcheck(torch.ops.hyperkd.gram.default, (detached,))
    torch.library.opcheck(torch.ops.hyperkd.sp_loss.default, (student, sp_teacher))
    torch.library.opcheck(torch.ops.hyperkd.rkd_loss.default, (student, grams, 0.5, 0.5))
    _, s_grams = torch.ops.hyperkd.rkd_loss(detached, grams, 0.5, 0.5)
    torch.library.opcheck(torch.ops.hyperkd.rkd_loss_backward.default,
                          (grad, detached, grams, s_grams, 0.5, 0.5))
    _, s_grams = torch.ops.hyperkd.sp_loss(detached, sp_teacher)
    torch.library.opcheck(torch.ops.hyperkd.sp_loss_backward.default, (grad, detached, sp_teacher, s_grams))


@pytest.mark.parametrize("method", ["sp", "rkd-da"])
def test_compile_fullgraph(method):
    student, teacher = feature_pair(SHAPES[:2], torch.float32)
    summaries = [kd.make_method(method).summarise(t, m) for m, t in enumerate(teacher)]

    def loss(a, b):
        return kd.layerwise_loss(method, [a, b], summaries, [1.0, 0.5], teacher_summarised=True)

    assert_compiled_matches_eager(loss, student, student)


@pytest.mark.parametrize("method", ["sp", "rkd-da"])
def test_saves_inputs_and_b_by_b_matrices_only(method):
    student, teacher = feature_pair(SHAPES, torch.float32)
    shapes = saved_tensor_shapes(lambda: _fused(student, teacher, method))
    B = SHAPES[0][0]
    assert sorted(shapes) == sorted([s for s in SHAPES] + [(B, B)] * (2 * len(SHAPES)))


def test_registry_names_map_to_the_fused_terms():
    student, teacher = feature_pair(SHAPES, torch.float64)
    for method in ("sp", "rkd-d", "rkd-a", "rkd-da"):
        _, terms = kd.layerwise_terms(method, student, teacher)
        assert_close(terms, _reference(student, teacher, method)[0], torch.float64)


@pytest.mark.parametrize("method", ["sp", "rkd-d"])
def test_batch_of_one_is_undefined(method):
    student, teacher = feature_pair([(1, 3, 2, 2)])
    with pytest.raises(ValueError, match="undefined for batch size 1"):
        kd.layerwise_loss(method, student, teacher)


def test_wrong_summary_shape_is_rejected():
    student, teacher = feature_pair(SHAPES)
    with pytest.raises(ValueError, match=r"teacher\[0\]: expected a raw feature of shape \(5, 3, 4, 4\) or a 5×5 summary"):
        rel.rkd_losses(student, [torch.zeros(4, 4)] + teacher[1:])


def test_negative_weights_are_rejected():
    student, teacher = feature_pair(SHAPES)
    with pytest.raises(ValueError, match="w_angle: expected w_angle >= 0"):
        rel.rkd_losses(student, teacher, w_angle=-1.0)


@pytest.mark.parametrize("method", ["rkd-d", "rkd-a"])
def test_degenerate_triplets_of_coincident_samples_are_masked(method):
    # Samples 0 and 1 coincide in the student: d_01 = 0, so every triplet using that pair is
    # degenerate and contributes a zero cosine, as in the reference's normalised zero vector.
    student, teacher = feature_pair([(4, 3, 2, 2)], torch.float64, requires_grad=False)
    student[0][1] = student[0][0]
    student[0].requires_grad_()
    terms = _fused(student, teacher, method)
    ref_terms, _, _ = _reference(student, teacher, method)
    assert_close(terms, ref_terms, torch.float64)
    (grad,) = torch.autograd.grad(terms.sum(), student)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("w_dist,w_angle", [(1.0, 0.0), (0.0, 1.0)])
def test_matches_torchdistill_rkd(w_dist, w_angle):
    """The benchmark's peer row computes the same loss: torchdistill 1.1.5's RKDLoss, per layer."""
    mid_level = pytest.importorskip("torchdistill.losses.mid_level", reason="the bench extra is not installed")
    rkd = mid_level.RKDLoss(None, None, dist_factor=w_dist, angle_factor=w_angle, reduction="mean")
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(8, c, 4, 4, generator=gen, dtype=torch.float64) for c in (3, 5)]
    teacher = [torch.randn(8, c, 4, 4, generator=gen, dtype=torch.float64) for c in (3, 5)]
    theirs = sum(rkd.compute_rkd_distance_loss(t.flatten(1), s.flatten(1))
                 + rkd.compute_rkd_angle_loss(t.flatten(1), s.flatten(1)) for s, t in zip(student, teacher))
    ours = rel.rkd_losses(student, [rel.gram(t) for t in teacher], w_dist=w_dist, w_angle=w_angle).sum()
    assert_close(ours, theirs, torch.float64)
