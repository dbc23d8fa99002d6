"""Similarity-preserving (SP) KD, LayerKD-HN appendix A.3.3, written as the paper's equations.

Q = reshape(f, B × C·H·W) (Eq. 14–15), G̃ = Q·Qᵀ (Eq. 16, B×B), each row L2-normalised (Eq. 17),
and L_m = ‖G_s − G_t‖²_F / B² (Eq. 18 with Tung & Mori's 1/B²).
"""
import torch
import torch.nn.functional as F


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """G of Eq. 16–17: the row-normalised B×B Gram of the flattened feature."""
    q = f.reshape(f.shape[0], -1)
    return F.normalize(q @ q.t(), dim=1)


def similarity_preserving_losses(student, teacher, teacher_is_summary=False):
    """The M per-layer terms L_m of Eq. 18."""
    terms = []
    for f, g in zip(student, teacher):
        g_t = g if teacher_is_summary else similarity_matrix(g)
        terms.append((similarity_matrix(f) - g_t).pow(2).sum() / f.shape[0] ** 2)
    return torch.stack(terms)
