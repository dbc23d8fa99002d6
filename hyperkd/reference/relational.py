"""Relational KD (RKD), LayerKD-HN appendix A.3.6, written as the paper's equations in the naive
formulation of Park et al. (2019) and torchdistill: the angle term forms the B×B×D tensor of
differences. It is the oracle and the memory baseline of the fused op.

Distance (Eq. 23–25): ψ_D = ‖f_i − f_j‖ / μ with μ the mean over pairs i ≠ j,
  L_D = Σ_{i,j} huber(ψ_D,s − ψ_D,t) / B².
Angle (Eq. 26–27): ψ_A(i, j, k) = ⟨e_ji, e_jk⟩ with e_ji = (f_i − f_j)/‖f_i − f_j‖ (zero when
f_i = f_j), L_A = Σ_{i,j,k} huber(ψ_A,s − ψ_A,t) / B³.
huber is smooth-L1 with δ = 1 (Eq. 22); the means over B² and B³ are Park et al.'s.
"""
import torch
import torch.nn.functional as F


def _flat(f):
    return f.reshape(f.shape[0], -1)


def normalised_distances(f: torch.Tensor) -> torch.Tensor:
    """ψ_D of Eq. 23–24: B×B distances divided by their mean over i ≠ j."""
    q = _flat(f)
    d = (q.unsqueeze(0) - q.unsqueeze(1)).norm(dim=2)
    B = q.shape[0]
    return d / (d.sum() / (B * (B - 1)))


def angles(f: torch.Tensor) -> torch.Tensor:
    """ψ_A of Eq. 26: B×B×B cosines, [j, i, k] = ⟨e_ji, e_jk⟩, through the B×B×D differences."""
    q = _flat(f)
    e = F.normalize(q.unsqueeze(0) - q.unsqueeze(1), dim=2)  # e[j, i] = (q_i − q_j)/‖·‖
    return torch.bmm(e, e.transpose(1, 2))


def rkd_losses(student, teacher, w_dist=1.0, w_angle=0.0):
    """The M per-layer terms w_dist·L_D + w_angle·L_A (RKD-D: 1, 0; RKD-A: 0, 1; RKD-DA: ½, ½)."""
    terms = []
    for f, g in zip(student, teacher):
        term = f.new_zeros((), dtype=torch.float64 if f.dtype == torch.float64 else torch.float32)
        if w_dist:
            term = term + w_dist * F.smooth_l1_loss(normalised_distances(f), normalised_distances(g))
        if w_angle:
            term = term + w_angle * F.smooth_l1_loss(angles(f), angles(g))
        terms.append(term)
    return torch.stack(terms)
