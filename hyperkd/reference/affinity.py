"""Modular affinity-based KD (mAKD, Li & Maki), written as the paper's equations: the test oracle and
benchmark baseline of the fused ``affinity`` ops.

L_mAKD(z_S, z_T) = L(f(g(z_S)), f(g(z_T)))                                     (Eq. 3)

with z the B×D batch of flattened features, g an affinity over every pair of samples (Eq. 4–7), f a
normalisation of the B×B matrix (Eq. 8–9, or none) and L a loss between the normalised matrices
(Eq. 10–14). Where the paper divides by a norm, a sum or a maximum that can be zero, the divisor is
clamped at ``EPS`` (``F.normalize``'s default), which the paper does not say; it changes nothing
for features that are not degenerate.
"""
import torch
import torch.nn.functional as F

AFFINITIES = ("l1", "l2", "ip", "cs")
NORMALISATIONS = ("l1", "l2", "avg", "max", "none")
LOSSES = ("l1", "l2", "sl1", "kl")
EPS = 1e-12


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.reshape(z.shape[0], -1)


def affinity_l1(z):
    """Eq. 4: G_ij = ‖z_i − z_j‖₁."""
    return torch.cdist(z, z, p=1)


def affinity_l2(z):
    """Eq. 5: G_ij = ‖z_i − z_j‖₂, from the differences (cdist's matrix-product route would lose
    the small distances to cancellation, which an oracle must not)."""
    return torch.cdist(z, z, p=2, compute_mode="donot_use_mm_for_euclid_dist")


def affinity_ip(z):
    """Eq. 6: G_ij = Σ_k z_ik z_jk."""
    return z @ z.t()


def affinity_cs(z):
    """Eq. 7: G_ij = Σ_k z_ik z_jk / (‖z_i‖₂ ‖z_j‖₂)."""
    unit = F.normalize(z, dim=1, eps=EPS)
    return unit @ unit.t()


def normalise_l1(G):
    """Eq. 8, left: G_ij / ‖G_i,:‖₁."""
    return F.normalize(G, p=1, dim=1, eps=EPS)


def normalise_l2(G):
    """Eq. 8, right: G_ij / ‖G_i,:‖₂."""
    return F.normalize(G, p=2, dim=1, eps=EPS)


def normalise_avg(G):
    """Eq. 9, left: b² G_ij / Σ_ij G_ij, so the entries average one."""
    b = G.shape[0]
    return b * b / G.sum().clamp_min(EPS) * G


def normalise_max(G):
    """Eq. 9, right: G_ij / max_ij G_ij."""
    return G / G.max().clamp_min(EPS)


def normalise_none(G):
    """No normalisation (noN)."""
    return G


def loss_l1(Gs, Gt):
    """Eq. 10–11: Σ_ij |G̃s_ij − G̃t_ij|."""
    return (Gs - Gt).abs().sum()


def loss_l2(Gs, Gt):
    """Eq. 10, 12: Σ_ij (G̃s_ij − G̃t_ij)²."""
    return (Gs - Gt).pow(2).sum()


def loss_sl1(Gs, Gt):
    """Eq. 10, 13: Σ_ij SmoothL1(G̃s_ij − G̃t_ij), 0.5x² below |x| = 1 and |x| − 0.5 above."""
    x = (Gs - Gt).abs()
    return torch.where(x < 1.0, 0.5 * x * x, x - 0.5).sum()


def loss_kl(Gs, Gt):
    """Eq. 14: 1/b Σ_ij Ĝt_ij log(Ĝt_ij / Ĝs_ij), Ĝ_i = softmax(G̃_i) row by row."""
    log_s = torch.log_softmax(Gs, dim=1)
    log_t = torch.log_softmax(Gt, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum() / Gs.shape[0]


_AFFINITY = {"l1": affinity_l1, "l2": affinity_l2, "ip": affinity_ip, "cs": affinity_cs}
_NORMALISE = {"l1": normalise_l1, "l2": normalise_l2, "avg": normalise_avg, "max": normalise_max,
              "none": normalise_none}
_LOSS = {"l1": loss_l1, "l2": loss_l2, "sl1": loss_sl1, "kl": loss_kl}


def normalised_affinity(z: torch.Tensor, aff: str, norm: str) -> torch.Tensor:
    """G̃ = f(g(z)) (B×B) of a batch of features (flattened to B×D), in fp32 (fp64 for fp64)."""
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    return _NORMALISE[norm](_AFFINITY[aff](_flat(z).to(acc)))


def makd_loss(zs: torch.Tensor, zt: torch.Tensor, aff: str, norm: str, loss: str,
              teacher_is_summary: bool = False) -> torch.Tensor:
    """Eq. 3: L(f(g(z_S)), f(g(z_T))); ``zt`` may be the teacher's G̃ (B×B) already."""
    gt = zt if teacher_is_summary else normalised_affinity(zt, aff, norm)
    gs = normalised_affinity(zs, aff, norm)
    return _LOSS[loss](gs, gt.to(gs.dtype))


def makd_losses(student, teacher, aff: str, norm: str, loss: str, teacher_is_summary=False):
    """The M per-layer terms of Eq. 3 for lists of student and teacher features."""
    return torch.stack([makd_loss(s, t, aff, norm, loss, teacher_is_summary)
                        for s, t in zip(student, teacher)])
