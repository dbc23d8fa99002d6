"""Fused relational KD as ``torch.ops.hyperkd`` ops: similarity preservation (SP, LayerKD-HN
Eq. 14–18) and relational KD distance/angle (RKD-D, RKD-A, RKD-DA; Eq. 22–27).

All terms are functions of per-layer Gram matrices G = Q·Qᵀ (B×B). The teacher summary is its
Gram (RKD) or row-normalised Gram (SP), and autograd saves only the student features, the teacher
summaries and the student Grams: RKD-A never forms the B×B×D difference tensor.
CPU kernels are C++ (``csrc/cpu/relational.cpp``); on CUDA the feature passes are Triton
(``kernels/relational.py``) and the B×B stage is :mod:`hyperkd.ops._gram_geometry`.
"""
import functools

import torch
import torch.nn.functional as F
from torch import nn

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import relational as triton_rel
from hyperkd.ops import _gram_geometry as geometry
from hyperkd.ops._checks import (accumulation_dtype, as_layer_list, check_features, check_number,
                                 check_pairs, layer_weights, summarise_raw)


def _sp_loss_cuda(student, teacher):
    grams = triton_rel.gram(student)
    return geometry.terms_and_gram_grads(geometry.sp_term, grams, teacher)[0], grams


def _sp_loss_backward_cuda(grad, student, teacher, grams):
    _, dgrams = geometry.terms_and_gram_grads(geometry.sp_term, grams, teacher, grad)
    return triton_rel.gram_backward(dgrams, student)


def _rkd_loss_cuda(student, teacher, w_dist, w_angle):
    grams = triton_rel.gram(student)
    term = functools.partial(geometry.rkd_term, w_dist=w_dist, w_angle=w_angle)
    return geometry.terms_and_gram_grads(term, grams, teacher)[0], grams


def _rkd_loss_backward_cuda(grad, student, teacher, grams, w_dist, w_angle):
    term = functools.partial(geometry.rkd_term, w_dist=w_dist, w_angle=w_angle)
    _, dgrams = geometry.terms_and_gram_grads(term, grams, teacher, grad)
    return triton_rel.gram_backward(dgrams, student)


torch.library.register_kernel("hyperkd::gram", "cuda", triton_rel.gram)
torch.library.register_kernel("hyperkd::sp_loss", "cuda", _sp_loss_cuda)
torch.library.register_kernel("hyperkd::sp_loss_backward", "cuda", _sp_loss_backward_cuda)
torch.library.register_kernel("hyperkd::rkd_loss", "cuda", _rkd_loss_cuda)
torch.library.register_kernel("hyperkd::rkd_loss_backward", "cuda", _rkd_loss_backward_cuda)


def _grams_like(feats):
    acc = accumulation_dtype(feats[0].dtype)
    B = feats[0].shape[0]
    return [f.new_empty(B, B, dtype=acc) for f in feats]


@torch.library.register_fake("hyperkd::gram")
def _gram_fake(feats):
    return _grams_like(feats)


@torch.library.register_fake("hyperkd::sp_loss")
def _sp_loss_fake(student, teacher):
    return student[0].new_empty(len(student), dtype=accumulation_dtype(student[0].dtype)), _grams_like(student)


@torch.library.register_fake("hyperkd::rkd_loss")
def _rkd_loss_fake(student, teacher, w_dist, w_angle):
    return _sp_loss_fake(student, teacher)


@torch.library.register_fake("hyperkd::sp_loss_backward")
def _sp_loss_backward_fake(grad, student, teacher, grams):
    return [torch.empty_like(f) for f in student]


@torch.library.register_fake("hyperkd::rkd_loss_backward")
def _rkd_loss_backward_fake(grad, student, teacher, grams, w_dist, w_angle):
    return [torch.empty_like(f) for f in student]


def _setup_context(ctx, inputs, output):
    student, teacher, *options = inputs
    _, grams = output
    ctx.mark_non_differentiable(*grams)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the Grams nothing differentiates
    ctx.layers, ctx.options = len(student), options
    ctx.save_for_backward(*student, *teacher, *grams)


def _backward_with(backward_op):
    def backward(ctx, grad, _grams):
        saved, M = ctx.saved_tensors, ctx.layers
        if grad is None:  # no gradient reached the losses (gradcheck tests this case)
            return ([None] * M, [None] * M) + (None,) * len(ctx.options)
        grads = backward_op(grad, saved[:M], saved[M:2 * M], saved[2 * M:], *ctx.options)
        return (list(grads), [None] * M) + (None,) * len(ctx.options)
    return backward


torch.library.register_autograd("hyperkd::sp_loss", _backward_with(torch.ops.hyperkd.sp_loss_backward),
                                setup_context=_setup_context)
torch.library.register_autograd("hyperkd::rkd_loss", _backward_with(torch.ops.hyperkd.rkd_loss_backward),
                                setup_context=_setup_context)


def _relational_inputs(student, teacher, summarise, what):
    student = as_layer_list(student, "student")
    teacher = as_layer_list(teacher, "teacher")
    check_features(student, "student")
    B = student[0].shape[0]
    if B < 2:
        raise ValueError(f"student: {what} relates the samples of a batch, so it is undefined for "
                         f"batch size 1; got batch size {B}")
    check_pairs(student, teacher)
    acc = accumulation_dtype(student[0].dtype)
    summaries = summarise_raw(teacher, summarise)
    for m, t in enumerate(summaries):
        if tuple(t.shape) != (B, B):
            raise ValueError(f"teacher[{m}]: expected a raw feature of shape {tuple(student[m].shape)} "
                             f"or a {B}×{B} summary, got {tuple(t.shape)}")
    return student, [t.detach().to(acc).contiguous() for t in summaries]


def gram(g):
    """G = Q·Qᵀ (B×B) of the flattened feature, per layer (one tensor or a list), without autograd."""
    feats = as_layer_list(g, "g")
    check_features(feats, "g")
    with torch.no_grad():
        grams = torch.ops.hyperkd.gram([f.detach() for f in feats])
    return grams[0] if isinstance(g, torch.Tensor) else list(grams)


def similarity_teacher_summary(g):
    """The teacher side of Eq. 18: its row-normalised Gram G (Eq. 16–17), B×B per layer."""
    grams = gram(g)
    if isinstance(grams, torch.Tensor):
        return F.normalize(grams, dim=1, eps=geometry.NORM_EPS)
    return [F.normalize(x, dim=1, eps=geometry.NORM_EPS) for x in grams]


def similarity_preserving_losses(student, teacher) -> torch.Tensor:
    """Per-layer SP terms ‖G_s − G_t‖²_F / B² (Eq. 18), an M-vector; ``teacher`` holds raw features
    or :func:`similarity_teacher_summary` results."""
    student, summaries = _relational_inputs(student, teacher, similarity_teacher_summary, "SP")
    return torch.ops.hyperkd.sp_loss(student, summaries)[0]


def similarity_preserving_loss(student, teacher, *, lambdas=None) -> torch.Tensor:
    """Σ_m λ_m L_SP,m (Eq. 18) in one fused call."""
    terms = similarity_preserving_losses(student, teacher)
    return (layer_weights(lambdas, terms.numel(), terms, terms.dtype) * terms).sum()


def rkd_losses(student, teacher, *, w_dist: float = 1.0, w_angle: float = 0.0) -> torch.Tensor:
    """Per-layer RKD terms w_dist·L_D + w_angle·L_A (Eq. 22–27), an M-vector.

    L_D = Σ_{i≠j} huber(d_s,ij/μ_s − d_t,ij/μ_t)/B², L_A = Σ_{i,j,k} huber(cos_s − cos_t)/B³
    (Park et al.'s means), with distances and angles computed from the Grams. ``teacher`` holds raw
    features or their Grams (:func:`gram`). RKD-D is (1, 0), RKD-A (0, 1), RKD-DA (½, ½).
    """
    w_dist = check_number(w_dist, "w_dist", minimum=0.0, strict=False)
    w_angle = check_number(w_angle, "w_angle", minimum=0.0, strict=False)
    student, summaries = _relational_inputs(student, teacher, gram, "RKD")
    return torch.ops.hyperkd.rkd_loss(student, summaries, w_dist, w_angle)[0]


def rkd_loss(student, teacher, *, w_dist: float = 1.0, w_angle: float = 0.0, lambdas=None):
    """Σ_m λ_m (w_dist·L_D + w_angle·L_A) in one fused call."""
    terms = rkd_losses(student, teacher, w_dist=w_dist, w_angle=w_angle)
    return (layer_weights(lambdas, terms.numel(), terms, terms.dtype) * terms).sum()


class SimilarityPreservingLoss(nn.Module):
    """Module form of :func:`similarity_preserving_loss`."""

    def forward(self, student, teacher, lambdas=None):
        return similarity_preserving_loss(student, teacher, lambdas=lambdas)


class RelationalLoss(nn.Module):
    """Module form of :func:`rkd_loss` with fixed distance and angle weights."""

    def __init__(self, w_dist: float = 1.0, w_angle: float = 0.0):
        super().__init__()
        self.w_dist = check_number(w_dist, "w_dist", minimum=0.0, strict=False)
        self.w_angle = check_number(w_angle, "w_angle", minimum=0.0, strict=False)

    def forward(self, student, teacher, lambdas=None):
        return rkd_loss(student, teacher, w_dist=self.w_dist, w_angle=self.w_angle, lambdas=lambdas)

    def extra_repr(self) -> str:
        return f"w_dist={self.w_dist}, w_angle={self.w_angle}"
