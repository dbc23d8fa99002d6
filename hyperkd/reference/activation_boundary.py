"""Activation-boundary (AB) KD, LayerKD-HN §3.3.2, written as the paper's equations.

ρ = [g > 0] is the teacher's activation mask (Eq. 8, where the printed condition is g > 0). Eq. 10
penalises the student f on the wrong side of the boundary with margin μ; we use the squared hinge
of Heo et al. (2019), element by element:

  ℓ(f, ρ) = (f + μ)² · [f > −μ ∧ ρ = 0] + (f − μ)² · [f ≤ μ ∧ ρ = 1]

and L_m = Σ_{i,c,h,w} ℓ / B (sum over the batch, divided by the batch size B).
"""
import torch

from hyperkd.reference.masks import unpack_mask


def activation_boundary_layer(f: torch.Tensor, rho: torch.Tensor, margin: float) -> torch.Tensor:
    """L_m of Eq. 10 for one layer; ``rho`` is a bool mask shaped like ``f``."""
    below = (f + margin).pow(2) * ((f > -margin) & ~rho)
    above = (f - margin).pow(2) * ((f <= margin) & rho)
    return (below + above).sum() / f.shape[0]


def activation_boundary_losses(student, teacher, margin=1.0, teacher_is_summary=False):
    """The M per-layer terms L_m; ``teacher`` holds raw features or their packed masks."""
    terms = []
    for f, g in zip(student, teacher):
        if teacher_is_summary:
            rho = unpack_mask(g, f[0].numel()).view(f.shape)
        else:
            rho = g > 0
        terms.append(activation_boundary_layer(f, rho, margin))
    return torch.stack(terms)


def activation_boundary_loss(student, teacher, *, margin=1.0, lambdas=None, teacher_is_summary=False):
    """Σ_m λ_m L_m of Eq. 10 with the squared hinge."""
    terms = activation_boundary_losses(student, teacher, margin, teacher_is_summary)
    lam = torch.ones_like(terms) if lambdas is None else torch.as_tensor(lambdas, dtype=terms.dtype)
    return (lam * terms).sum()
