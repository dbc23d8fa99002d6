"""Attention transfer (AT) KD, LayerKD-HN §3.3.1, written as the paper's equations.

S is the spatial attention map of a feature f (B×C×H×W), flattened per sample (``vec``):
  kind 0, Eq. 4:  S = Σ_c |f_c|
  kind 1, Eq. 5:  S = Σ_c |f_c|^p
  kind 2, Eq. 6:  S = max_c |f_c|^p
Each map is L2-normalised per sample, q = S / max(‖S‖₂, eps).

Loss over layers m with weights λ_m (Eq. 7, ``reduction="sum"``):
  L = Σ_m λ_m Σ_i ‖q_m,i(student) − q_m,i(teacher)‖_p
The Zagoruyko & Komodakis convention (``reduction="mean"``):
  L = Σ_m λ_m mean_{i,hw} (q_m,i(student) − q_m,i(teacher))²
"""
import torch
import torch.nn.functional as F

EPS = 1e-6


def attention_map(f: torch.Tensor, kind: int, p: float) -> torch.Tensor:
    """S^{AT kind, p}(f) of Eq. 4–6, flattened to B×(H·W)."""
    a = f.abs()
    if kind == 0:
        s = a.sum(dim=1)
    elif kind == 1:
        s = a.pow(p).sum(dim=1)
    else:
        s = a.pow(p).amax(dim=1)
    return s.flatten(1)


def attention_teacher_summary(g: torch.Tensor, kind: int, p: float, eps: float = EPS) -> torch.Tensor:
    """The normalised teacher map vec(S)/‖vec(S)‖₂ of Eq. 7, B×(H·W)."""
    return F.normalize(attention_map(g, kind, p), dim=1, eps=eps)


def attention_transfer_loss(student, teacher, *, kind=0, p=1.0, lambdas=None, reduction="sum",
                            eps=EPS, teacher_is_summary=False):
    """Σ_m λ_m L_AT(f_m, g_m) of Eq. 7 (``"sum"``) or the squared-mean convention (``"mean"``)."""
    lambdas = [1.0] * len(student) if lambdas is None else lambdas
    total = 0.0
    for lam, f, g in zip(lambdas, student, teacher):
        q_s = F.normalize(attention_map(f, kind, p), dim=1, eps=eps)
        q_t = g if teacher_is_summary else attention_teacher_summary(g, kind, p, eps)
        diff = q_s - q_t
        if reduction == "sum":
            term = diff.abs().pow(p).sum(dim=1).pow(1.0 / p).sum()
        else:
            term = diff.pow(2).mean()
        total = total + lam * term
    return total
