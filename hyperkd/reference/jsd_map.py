"""The Jensen–Shannon map loss of layer-wise learning rates (§3.4, Eq. 8–10), as equations.

A map of layer j for sample i is a B×C×H×W feature reduced over channels, S = Σ_c |f_c|^p (the
attention map; kind 0 is p = 1), or a B×N map (a Jacobian or Hessian map, read as C = 1, so
S = |map|^p). It becomes a distribution per sample,
  P = S / max(Σ S, eps)                 (``softmax=False``, the default)
  P = softmax(S)                        (``softmax=True``)
and the divergence of student P and teacher Q (Eq. 8–10, equal weights ½) is
  JSD(P‖Q) = ½ KL(P‖M) + ½ KL(Q‖M),  M = ½(P + Q),
with an ε floor inside the logarithms: KL(P‖M) = Σ P log((P + ε)/(M + ε)). It is symmetric, zero
for P = Q and at most ln 2 for any ε ≥ 0. Layer m's term L_m is the batch mean (or sum) of the
per-sample divergences; the loss is Σ_m λ_m L_m.
"""
import torch

EPS = 1e-8


def channel_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """S = Σ_c |f_c|^p flattened to B×(H·W); a B×N map is its own single channel."""
    if f.dim() == 2:
        f = f[:, None, None, :]
    return f.abs().pow(p).sum(dim=1).flatten(1)


def to_distribution(s: torch.Tensor, softmax: bool = False, eps: float = EPS) -> torch.Tensor:
    """Each row of S as a distribution: S/max(ΣS, eps), or softmax(S)."""
    if softmax:
        return torch.softmax(s, dim=1)
    return s / s.sum(dim=1, keepdim=True).clamp_min(eps)


def kl_floor(p: torch.Tensor, m: torch.Tensor, eps: float) -> torch.Tensor:
    """Σ p log((p + ε)/(m + ε)) per row."""
    return (p * (torch.log(p + eps) - torch.log(m + eps))).sum(dim=1)


def jsd(p: torch.Tensor, q: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """JSD(P‖Q) per row, Eq. 8–10 with equal weights."""
    m = (p + q) / 2
    return (kl_floor(p, m, eps) + kl_floor(q, m, eps)) / 2


def jsd_map_summary(g: torch.Tensor, p: float = 2.0, softmax: bool = False, eps: float = EPS) -> torch.Tensor:
    """The teacher's distribution Q of one layer, B×N."""
    return to_distribution(channel_map(g, p), softmax, eps)


def jsd_map_loss(student, teacher, *, p=2.0, softmax=False, lambdas=None, reduction="mean", eps=EPS,
                 teacher_is_summary=False):
    """Σ_m λ_m L_m with L_m the batch mean (``"mean"``) or sum of JSD(P_m,i ‖ Q_m,i)."""
    lambdas = [1.0] * len(student) if lambdas is None else lambdas
    total = 0.0
    for lam, f, g in zip(lambdas, student, teacher):
        q = g if teacher_is_summary else jsd_map_summary(g, p, softmax, eps)
        rows = jsd(to_distribution(channel_map(f, p), softmax, eps), q, eps)
        total = total + lam * (rows.mean() if reduction == "mean" else rows.sum())
    return total
