"""Fused attention-transfer KD (LayerKD-HN §3.3.1, Eq. 4–7) as ``torch.ops.hyperkd`` ops.

``at_summary`` turns features into normalised maps (the teacher's summary) and ``at_loss``
computes Σ_m λ_m L_AT over all layers in one call. CPU kernels are C++
(``csrc/cpu/attention_transfer.cpp``), CUDA kernels Triton (``kernels/attention_transfer.py``).
The teacher is a constant target: no gradient flows to it.

With ``with_grad``, ``at_loss`` also returns d(Σ_m λ_m L_m)/df_m, computed per (layer, sample)
row while the row is in cache (:mod:`hyperkd.ops._forward_grads`), and those gradients are all
that backward keeps: neither the student's nor the teacher's maps outlive the forward.
"""
import torch
from torch import nn

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import attention_transfer as triton_at
from hyperkd.ops._checks import accumulation_dtype, as_layer_list, check_features, check_pairs
from hyperkd.ops._forward_grads import call_weighted, fake_outputs, register_forward_grad_autograd

EPS = 1e-6
REDUCTIONS = ("sum", "mean")

torch.library.register_kernel("hyperkd::at_summary", "cuda", triton_at.at_summary)
torch.library.register_kernel("hyperkd::at_loss", "cuda", triton_at.at_loss)


@torch.library.register_fake("hyperkd::at_summary")
def _at_summary_fake(feats, kind, p, eps):
    acc = accumulation_dtype(feats[0].dtype)
    return [f.new_empty(f.shape[0], f.shape[2] * f.shape[3], dtype=acc) for f in feats]


@torch.library.register_fake("hyperkd::at_loss")
def _at_loss_fake(student, teacher, lambdas, kind, p, eps, mean, with_grad):
    return fake_outputs(student, with_grad, scalar=True)


register_forward_grad_autograd("hyperkd::at_loss")


def _check_options(kind, p, reduction="sum"):
    if kind not in (0, 1, 2) or isinstance(kind, bool):
        raise ValueError(f"kind: expected 0 (Σ|f|), 1 (Σ|f|^p) or 2 (max|f|^p), got {kind!r}")
    if not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"p: expected a number > 0, got {p!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def attention_teacher_summary(g, kind: int = 0, p: float = 1.0, *, eps: float = EPS):
    """The teacher side of Eq. 7: vec(S)/max(‖vec(S)‖₂, eps) per sample, B×H·W per layer.

    Takes one feature map or a list; returns the same structure. Computed without autograd, so a
    training loop can keep these maps and free the teacher's activations right away.
    """
    _check_options(kind, p)
    feats = as_layer_list(g, "g")
    check_features(feats, "g")
    with torch.no_grad():
        maps = torch.ops.hyperkd.at_summary([f.detach() for f in feats], kind, float(p), float(eps))
    return maps[0] if isinstance(g, torch.Tensor) else list(maps)


def attention_transfer_loss(student, teacher, *, kind: int = 0, p: float = 1.0, lambdas=None,
                            reduction: str = "sum", eps: float = EPS) -> torch.Tensor:
    """Σ_m λ_m · L_AT(f_m, g_m) over a list of layer pairs of any shapes, in one fused call.

    Maps (Eq. 4–6): kind 0 S = Σ_c|f_c|, kind 1 S = Σ_c|f_c|^p, kind 2 S = max_c|f_c|^p, flattened
    per sample and normalised, q = S / max(‖S‖₂, eps) with eps = 1e-6 by default.

    - ``reduction="sum"`` (Eq. 7): Σ_m λ_m Σ_i ‖q_s,i − q_t,i‖_p.
    - ``reduction="mean"`` (Zagoruyko & Komodakis): Σ_m λ_m mean_{i,hw} (q_s − q_t)².

    ``teacher`` holds, per layer, either the raw B×C×H×W feature or its summary from
    :func:`attention_teacher_summary` (B×H·W). The loss is fp32 (fp64 for fp64 features).
    """
    _check_options(kind, p, reduction)
    student = as_layer_list(student, "student")
    teacher = as_layer_list(teacher, "teacher")
    check_features(student, "student")
    check_pairs(student, teacher)
    for m, (s, t) in enumerate(zip(student, teacher)):
        expected = (s.shape[0], s.shape[2] * s.shape[3])
        if t.dim() != 4 and tuple(t.shape) != expected:
            raise ValueError(f"teacher[{m}]: expected a raw feature of shape {tuple(s.shape)} or a "
                             f"summary of shape {expected}, got {tuple(t.shape)}")
    return weighted_attention_loss(student, teacher, lambdas, kind, p, eps, reduction == "mean")[0]


def weighted_attention_loss(student, teacher, lambdas, kind: int, p: float, eps: float = EPS,
                            mean: bool = False):
    """(Σ_m λ_m L_m, the unweighted L_m) through ``hyperkd::at_loss``. Each teacher entry is a
    summary or a raw feature; a raw one is read in place, its maps made row by row inside the
    loss, so that no B×HW summary of it is allocated."""
    acc = accumulation_dtype(student[0].dtype)
    teacher = [t.detach().to(s.dtype) if t.dim() == 4 else t.detach().to(acc).contiguous()
               for s, t in zip(student, teacher)]
    return call_weighted(torch.ops.hyperkd.at_loss, student, teacher, lambdas, kind, float(p), float(eps),
                         mean)


class AttentionTransferLoss(nn.Module):
    """Module form of :func:`attention_transfer_loss` with fixed kind, p and reduction."""

    def __init__(self, kind: int = 0, p: float = 1.0, reduction: str = "sum", eps: float = EPS):
        super().__init__()
        _check_options(kind, p, reduction)
        self.kind, self.p, self.reduction, self.eps = kind, p, reduction, eps

    def forward(self, student, teacher, lambdas=None):
        return attention_transfer_loss(student, teacher, kind=self.kind, p=self.p, lambdas=lambdas,
                                       reduction=self.reduction, eps=self.eps)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, p={self.p}, reduction={self.reduction!r}"
