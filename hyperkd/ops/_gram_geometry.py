"""The B×B stage of the relational KD ops on CUDA: SP and RKD terms as functions of Gram
matrices (LayerKD-HN Eq. 17–18, 22–27), in torch. The feature-sized passes (the Grams and
dQ = (dG + dGᵀ)·Q) are Triton kernels; this stage only touches B×B matrices (B×B×B for angles,
a memory bound of a few B² floats per layer), and its backward differentiates these few small ops.
The CPU op implements the same formulas in C++ (``csrc/cpu/relational.cpp``).
"""
import torch
import torch.nn.functional as F

NORM_EPS = 1e-12  # F.normalize's default, as in Tung & Mori


def sp_term(gram: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """‖normalise_rows(G̃_s) − G_t‖²_F / B² (Eq. 17–18)."""
    return (F.normalize(gram, dim=1, eps=NORM_EPS) - teacher).pow(2).sum() / gram.shape[0] ** 2


def distances(gram: torch.Tensor) -> torch.Tensor:
    """d_ij = sqrt(G_ii + G_jj − 2 G_ij), zero on the diagonal and where rounding gives d² ≤ 0."""
    diag = gram.diagonal()
    sq = diag[:, None] + diag[None, :] - 2 * gram
    keep = (sq > 0) & ~torch.eye(gram.shape[0], dtype=torch.bool, device=gram.device)
    return torch.where(keep, sq.clamp_min(torch.finfo(gram.dtype).tiny).sqrt(), 0.0)


def normalised_distances(gram: torch.Tensor) -> torch.Tensor:
    d = distances(gram)
    B = gram.shape[0]
    return d / (d.sum() / (B * (B - 1)))


def angles(gram: torch.Tensor) -> torch.Tensor:
    """[j, i, k] = (G_ik − G_ij − G_jk + G_jj)/(d_ij d_kj), zero for degenerate triplets."""
    d = distances(gram)
    num = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + gram.diagonal()[:, None, None]
    den = d[:, :, None] * d[:, None, :]
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def rkd_term(gram: torch.Tensor, teacher: torch.Tensor, w_dist: float, w_angle: float) -> torch.Tensor:
    term = gram.new_zeros(())
    if w_dist:
        term = term + w_dist * F.smooth_l1_loss(normalised_distances(gram), normalised_distances(teacher))
    if w_angle:
        term = term + w_angle * F.smooth_l1_loss(angles(gram), angles(teacher))
    return term


def terms_and_gram_grads(term_fn, grams, teachers, grad=None):
    """The per-layer terms, and, given the upstream ``grad`` (M), dL/dG̃ per layer."""
    with torch.enable_grad():
        leaves = [g.detach().requires_grad_(grad is not None) for g in grams]
        terms = torch.stack([term_fn(g, t) for g, t in zip(leaves, teachers)])
        if grad is None:
            return terms.detach(), None
        return terms.detach(), list(torch.autograd.grad(terms, leaves, grad.to(terms.dtype)))
