"""Fused activation-boundary KD (LayerKD-HN §3.3.2, Eq. 8 and 10) as ``torch.ops.hyperkd`` ops.

The teacher side is ρ = [g > 0] packed to bits (``pack_positive_mask``, 1/32 of an fp32 feature).
``ab_loss`` returns λ_m L_m and L_m per layer, L_m = Σ ℓ / B of the squared hinge of Heo et al.,
and computes the gradients of Σ_m λ_m L_m in the same pass over each row
(:mod:`hyperkd.ops._forward_grads`): they are all that autograd keeps. CPU kernels are C++
(``csrc/cpu/activation_boundary.cpp``), CUDA kernels Triton (``kernels/activation_boundary.py``).
"""
import torch
from torch import nn

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import activation_boundary as triton_ab
from hyperkd.ops._checks import (as_layer_list, check_features, check_number, check_pairs,
                                 summarise_raw)
from hyperkd.ops._forward_grads import call_weighted, fake_outputs, register_forward_grad_autograd
from hyperkd.ops.masks import pack_positive_mask

torch.library.register_kernel("hyperkd::ab_loss", "cuda", triton_ab.ab_loss)


@torch.library.register_fake("hyperkd::ab_loss")
def _ab_loss_fake(student, masks, lambdas, margin, with_grad):
    return fake_outputs(student, with_grad, scalar=False)


register_forward_grad_autograd("hyperkd::ab_loss")


def activation_boundary_teacher_summary(g):
    """ρ = [g > 0] of Eq. 8 packed to bits, B×⌈C·H·W/8⌉ uint8 per layer (one tensor or a list)."""
    feats = as_layer_list(g, "g")
    check_features(feats, "g")
    masks = [pack_positive_mask(f) for f in feats]
    return masks[0] if isinstance(g, torch.Tensor) else masks


def activation_boundary_terms(student, teacher, *, margin: float = 1.0, lambdas=None):
    """(λ_m L_m, L_m) per layer of Eq. 10 from one fused call; the first is differentiable.

    ℓ = (f + μ)²·[f > −μ ∧ g ≤ 0] + (f − μ)²·[f ≤ μ ∧ g > 0], L_m = Σ_{i,c,h,w} ℓ / B (fp32;
    fp64 for fp64 features). ``teacher`` holds, per layer, the raw feature or its packed mask
    from :func:`activation_boundary_teacher_summary`.
    """
    margin = check_number(margin, "margin", minimum=0.0, strict=False)
    student = as_layer_list(student, "student")
    teacher = as_layer_list(teacher, "teacher")
    check_features(student, "student")
    check_pairs(student, teacher)
    masks = summarise_raw(teacher, activation_boundary_teacher_summary)
    for m, (s, t) in enumerate(zip(student, masks)):
        expected = (s.shape[0], (s[0].numel() + 7) // 8)
        if t.dtype != torch.uint8 or tuple(t.shape) != expected:
            raise ValueError(f"teacher[{m}]: expected a raw feature of shape {tuple(s.shape)} or a "
                             f"packed uint8 mask of shape {expected}, got {tuple(t.shape)} {t.dtype}")
    return call_weighted(torch.ops.hyperkd.ab_loss, student, [t.contiguous() for t in masks], lambdas,
                         margin)


def activation_boundary_losses(student, teacher, *, margin: float = 1.0) -> torch.Tensor:
    """The per-layer terms L_m of Eq. 10, an M-vector (see :func:`activation_boundary_terms`)."""
    return activation_boundary_terms(student, teacher, margin=margin)[0]


def activation_boundary_loss(student, teacher, *, margin: float = 1.0, lambdas=None) -> torch.Tensor:
    """Σ_m λ_m L_m of Eq. 10 over a list of layer pairs, in one fused call."""
    return activation_boundary_terms(student, teacher, margin=margin, lambdas=lambdas)[0].sum()


class ActivationBoundaryLoss(nn.Module):
    """Module form of :func:`activation_boundary_loss` with a fixed margin μ."""

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = check_number(margin, "margin", minimum=0.0, strict=False)

    def forward(self, student, teacher, lambdas=None):
        return activation_boundary_loss(student, teacher, margin=self.margin, lambdas=lambdas)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
