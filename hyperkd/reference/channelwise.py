"""Per-channel KD losses, LayerKD-HN appendix A.3, written as the paper's equations.

CwD (Eq. 20–21, Shu et al. 2021): φ(f_c) = softmax over the H·W positions of f_c/τ;
  L_m = τ²/(C·B) Σ_{i,c} KL(φ(g_ic) ‖ φ(f_ic)), with log-softmax for stability (Shu et al. also
  divide by the batch size B).
FitNets (Eq. 11): L_m = Σ_{i,c} ‖vec(f_ic) − vec(g_ic)‖₂, the unsquared L2 norm per channel as
  printed (same-architecture teacher, so no regressor).
"""
import torch


def cwd_losses(student, teacher, tau=4.0):
    """The M per-layer CwD terms of Eq. 21."""
    terms = []
    for f, g in zip(student, teacher):
        B, C = f.shape[:2]
        log_ps = torch.log_softmax(f.flatten(2) / tau, dim=2)
        log_pt = torch.log_softmax(g.flatten(2) / tau, dim=2)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum()
        terms.append(kl * tau ** 2 / (C * B))
    return torch.stack(terms)


def fitnets_losses(student, teacher):
    """The M per-layer FitNets terms of Eq. 11."""
    return torch.stack([(f - g).flatten(2).norm(dim=2).sum() for f, g in zip(student, teacher)])
