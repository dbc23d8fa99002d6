"""The B×B stage of the affinity ops on CUDA (mAKD Eq. 4–14 from a pair matrix), in torch.

The feature-sized pass gives one B×B pair matrix per layer: the Gram Q·Qᵀ (IP, CS, L2) or the L1
distances. From it this stage forms the affinity, its normalisation and the loss; the backward
differentiates these few B×B ops (:func:`hyperkd.ops._gram_geometry.terms_and_gram_grads`). The CPU
op implements the same formulas in C++ (``csrc/cpu/affinity.cpp``).
"""
import torch
import torch.nn.functional as F

EPS = 1e-12  # every divisor's clamp, F.normalize's default


def affinity_from_pairs(pairs: torch.Tensor, aff: str) -> torch.Tensor:
    """g(z) (Eq. 4–7) from the Gram (IP, CS, L2) or the L1 distances (L1)."""
    if aff in ("ip", "l1"):
        return pairs
    diag = pairs.diagonal()
    if aff == "cs":
        n = diag.clamp_min(0).sqrt().clamp_min(EPS)
        return pairs / (n[:, None] * n[None, :])
    sq = diag[:, None] + diag[None, :] - 2 * pairs
    keep = (sq > 0) & ~torch.eye(pairs.shape[0], dtype=torch.bool, device=pairs.device)
    return torch.where(keep, sq.clamp_min(torch.finfo(pairs.dtype).tiny).sqrt(), 0.0)


def normalise(A: torch.Tensor, norm: str) -> torch.Tensor:
    """f(A) (Eq. 8–9, or none)."""
    if norm in ("l1", "l2"):
        return F.normalize(A, p=int(norm[1]), dim=1, eps=EPS)
    if norm == "avg":
        return A.numel() / A.sum().clamp_min(EPS) * A
    if norm == "max":
        return A / A.max().clamp_min(EPS)
    return A


def loss(s: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """L(Ãs, Ãt) (Eq. 10–14)."""
    if kind == "kl":
        log_s, log_t = torch.log_softmax(s, dim=1), torch.log_softmax(t, dim=1)
        return (log_t.exp() * (log_t - log_s)).sum() / s.shape[0]
    x = s - t
    if kind == "l1":
        return x.abs().sum()
    if kind == "l2":
        return x.pow(2).sum()
    return F.smooth_l1_loss(s, t, reduction="sum")


def term(pairs: torch.Tensor, teacher: torch.Tensor, aff: str, norm: str, kind: str) -> torch.Tensor:
    return loss(normalise(affinity_from_pairs(pairs, aff), norm), teacher, kind)
