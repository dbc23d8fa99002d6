"""Fused modular affinity KD (mAKD, Li & Maki Eq. 3–14) as ``torch.ops.hyperkd`` ops.

L_m = L(f(g(z_S,m)), f(g(z_T,m))) per layer, z the B×D flattened feature, with the affinity g
(``aff``: l1, l2, ip, cs; Eq. 4–7), the normalisation f (``norm``: l1, l2, avg, max, none;
Eq. 8–9) and the loss L (``loss``: l1, l2, sl1, kl; Eq. 10–14). The teacher summary is its
normalised B×B matrix f(g(z_T)). The gradients w.r.t. the student features are computed in the
forward, while the B×B matrices are at hand, and autograd keeps only them (B×D per layer), never a
B×B×D tensor.
CPU kernels are C++ (``csrc/cpu/affinity.cpp``); on CUDA the feature passes are Triton
(``kernels/affinity.py``) and the B×B stage is :mod:`hyperkd.ops._affinity_epilogue`.
"""
import functools

import torch

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import affinity as triton_aff
from hyperkd.ops import _affinity_epilogue as epilogue
from hyperkd.ops._checks import SUPPORTED_DTYPES, accumulation_dtype, as_layer_list, layer_weights
from hyperkd.ops._gram_geometry import terms_and_gram_grads

AFFINITIES = ("l1", "l2", "ip", "cs")
NORMALISATIONS = ("l1", "l2", "avg", "max", "none")
LOSSES = ("l1", "l2", "sl1", "kl")


def _affinity_cuda(feats, aff, norm):
    pairs = triton_aff.pair_matrices(feats, aff)
    return [epilogue.normalise(epilogue.affinity_from_pairs(p, aff), norm) for p in pairs]


def _loss_cuda(student, teacher, aff, norm, loss):
    pairs = triton_aff.pair_matrices(student, aff)
    term = functools.partial(epilogue.term, aff=aff, norm=norm, kind=loss)
    return terms_and_gram_grads(term, pairs, teacher)[0], pairs


def _loss_backward_cuda(grad, student, teacher, pairs, aff, norm, loss):
    term = functools.partial(epilogue.term, aff=aff, norm=norm, kind=loss)
    _, dpairs = terms_and_gram_grads(term, pairs, teacher, grad)
    return triton_aff.pair_backward(dpairs, list(student), aff)


def _loss_with_grad_cuda(student, teacher, aff, norm, loss):
    losses, pairs = _loss_cuda(student, teacher, aff, norm, loss)
    return losses, pairs, _loss_backward_cuda(torch.ones_like(losses), student, teacher, pairs, aff, norm, loss)


torch.library.register_kernel("hyperkd::affinity", "cuda", _affinity_cuda)
torch.library.register_kernel("hyperkd::affinity_loss", "cuda", _loss_cuda)
torch.library.register_kernel("hyperkd::affinity_loss_with_grad", "cuda", _loss_with_grad_cuda)


def _matrices_like(feats):
    B = feats[0].shape[0]
    return [f.new_empty(B, B, dtype=accumulation_dtype(f.dtype)) for f in feats]


@torch.library.register_fake("hyperkd::affinity")
def _affinity_fake(feats, aff, norm):
    return _matrices_like(feats)


@torch.library.register_fake("hyperkd::affinity_loss")
def _loss_fake(student, teacher, aff, norm, loss):
    return student[0].new_empty(len(student), dtype=accumulation_dtype(student[0].dtype)), _matrices_like(student)


@torch.library.register_fake("hyperkd::affinity_loss_with_grad")
def _loss_with_grad_fake(student, teacher, aff, norm, loss):
    return (*_loss_fake(student, teacher, aff, norm, loss), [torch.empty_like(f) for f in student])


# The autograd of hyperkd::affinity_loss is registered in C++ (csrc/cpu/affinity.cpp) for every
# device: where a student feature needs its gradient, the forward runs
# hyperkd::affinity_loss_with_grad, which also returns d(Σ_m L_m)/dz_m, and the backward scales
# those by the incoming gradient.


def check_variant(aff: str, norm: str, loss: str = "l2"):
    """Each component named by one of its strings; the error lists the valid ones."""
    for name, value, valid in (("aff", aff, AFFINITIES), ("norm", norm, NORMALISATIONS),
                               ("loss", loss, LOSSES)):
        if value not in valid:
            raise ValueError(f"{name}: expected one of {', '.join(valid)}, got {value!r}")


def _rows(feats, name):
    """Each layer's feature as a B×D matrix (a view where the layout allows), one B ≥ 2."""
    feats = as_layer_list(feats, name)
    first = feats[0]
    B, dtype = first.shape[0], first.dtype
    # Called every step: only metadata is read (no tensor is made), and the device only of layers
    # after the first.
    for m, f in enumerate(feats):
        if f.dim() < 2 or f.shape[1:].numel() == 0:
            raise ValueError(f"{name}[{m}]: expected a B×D or B×C×H×W feature, got shape {tuple(f.shape)}")
        if f.dtype != dtype or dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name}[{m}]: expected one floating dtype {SUPPORTED_DTYPES} for all layers, "
                            f"got {f.dtype}")
        if f.shape[0] != B or (m and f.device != first.device):
            raise ValueError(f"{name}[{m}]: batch and device must match {name}[0]'s")
    if B < 2:
        raise ValueError(f"{name}: affinity KD relates the samples of a batch (there are no pairs in "
                         f"a batch of 1); got batch size {B}")
    # A B×D feature goes in as it is: reshaping it would add a view node to the autograd graph.
    return [f if f.dim() == 2 else f.reshape(B, -1) for f in feats]


def affinity_teacher_summary(g, aff: str, norm: str):
    """The teacher side of Eq. 3: f(g(z)) (B×B) per layer (one tensor or a list), without autograd."""
    check_variant(aff, norm)
    rows = _rows(g, "g")
    with torch.no_grad():
        out = torch.ops.hyperkd.affinity([r.detach() for r in rows], aff, norm)
    return out[0] if isinstance(g, torch.Tensor) else list(out)


def affinity_losses(student, teacher_summaries, aff: str, norm: str, loss: str) -> torch.Tensor:
    """Per-layer mAKD terms L(f(g(z_S,m)), Ã_T,m) (Eq. 3), an M-vector differentiable w.r.t. the
    student; ``teacher_summaries`` are :func:`affinity_teacher_summary` results."""
    check_variant(aff, norm, loss)
    rows = _rows(student, "student")
    teacher = as_layer_list(teacher_summaries, "teacher_summaries")
    B, acc = rows[0].shape[0], accumulation_dtype(rows[0].dtype)
    if len(teacher) != len(rows):
        raise ValueError(f"teacher_summaries: expected {len(rows)} B×B matrices, got {len(teacher)}")
    for m, t in enumerate(teacher):
        if tuple(t.shape) != (B, B) or t.device != rows[0].device:
            raise ValueError(f"teacher_summaries[{m}]: expected a {B}×{B} matrix on {rows[0].device}, "
                             f"got {tuple(t.shape)} on {t.device}")
    teacher = [t.detach().to(acc).contiguous() for t in teacher]
    return torch.ops.hyperkd.affinity_loss(rows, teacher, aff, norm, loss)[0]


def affinity_loss(student, teacher, aff: str = "cs", norm: str = "l2", loss: str = "sl1", *,
                  lambdas=None, teacher_is_summary: bool = False) -> torch.Tensor:
    """Σ_m λ_m L_mAKD,m in one fused call; ``teacher`` holds raw features unless
    ``teacher_is_summary``."""
    summaries = teacher if teacher_is_summary else affinity_teacher_summary(
        as_layer_list(teacher, "teacher"), aff, norm)
    terms = affinity_losses(student, summaries, aff, norm, loss)
    return (layer_weights(lambdas, terms.numel(), terms, terms.dtype) * terms).sum()
