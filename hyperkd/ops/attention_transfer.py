"""Fused attention-transfer KD (LayerKD-HN §3.3.1, Eq. 4–7) as ``torch.ops.hyperkd`` ops.

``at_summary`` turns features into normalised maps (the teacher's summary), ``at_loss`` computes
Σ_m λ_m L_AT over all layers in one call, and ``at_loss_backward`` is its backward. CPU kernels are
C++ (``csrc/cpu/attention_transfer.cpp``), CUDA kernels Triton (``kernels/attention_transfer.py``).
The teacher is a constant target: no gradient flows to it.

Forward also returns ``map_grad``, dL/dS for every spatial position (B×ΣHW, λ_m and the reduction
folded in), and that is all backward keeps besides the student features: the loss is a scalar, so
backward only scales it by the incoming gradient. Neither the student's nor the teacher's maps
outlive the forward.
"""
import torch
from torch import nn

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import attention_transfer as triton_at
from hyperkd.ops._checks import (accumulation_dtype, as_layer_list, check_features, check_pairs,
                                 layer_weights, summarise_raw)

EPS = 1e-6
REDUCTIONS = ("sum", "mean")

torch.library.register_kernel("hyperkd::at_summary", "cuda", triton_at.at_summary)
torch.library.register_kernel("hyperkd::at_loss", "cuda", triton_at.at_loss)
torch.library.register_kernel("hyperkd::at_loss_backward", "cuda", triton_at.at_loss_backward)


@torch.library.register_fake("hyperkd::at_summary")
def _at_summary_fake(feats, kind, p, eps):
    acc = accumulation_dtype(feats[0].dtype)
    return [f.new_empty(f.shape[0], f.shape[2] * f.shape[3], dtype=acc) for f in feats]


@torch.library.register_fake("hyperkd::at_loss")
def _at_loss_fake(student, teacher, lambdas, kind, p, eps, mean):
    acc = accumulation_dtype(student[0].dtype)
    B, M = student[0].shape[0], len(student)
    total = sum(B * f.shape[2] * f.shape[3] for f in student)
    first = student[0]
    return (first.new_empty((), dtype=acc), first.new_empty(M, dtype=acc),
            first.new_empty(total, dtype=acc))


@torch.library.register_fake("hyperkd::at_loss_backward")
def _at_loss_backward_fake(grad, student, map_grad, kind, p):
    return [torch.empty_like(f) for f in student]


def _setup_context(ctx, inputs, output):
    student, teacher, lambdas, kind, p, eps, mean = inputs
    _, layer_losses, map_grad = output
    ctx.mark_non_differentiable(layer_losses, map_grad)
    # Otherwise autograd hands backward a zero-filled gradient for the B×ΣHW map_grad, as large
    # as map_grad itself, only for it to be ignored.
    ctx.set_materialize_grads(False)
    ctx.layers = len(student)
    ctx.options = (kind, p)
    ctx.save_for_backward(*student, map_grad)


def _backward(ctx, grad_loss, _layer_losses, _map_grad):
    M = ctx.layers
    if grad_loss is None:  # the loss itself was not used
        return [None] * M, [None] * M, None, None, None, None, None
    *student, map_grad = ctx.saved_tensors
    grads = torch.ops.hyperkd.at_loss_backward(grad_loss, student, map_grad, *ctx.options)
    return list(grads), [None] * M, None, None, None, None, None


torch.library.register_autograd("hyperkd::at_loss", _backward, setup_context=_setup_context)


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
    acc = accumulation_dtype(student[0].dtype)
    maps = summarise_raw(teacher, lambda raw: attention_teacher_summary(raw, kind, p, eps=eps))
    for m, (s, t) in enumerate(zip(student, maps)):
        expected = (s.shape[0], s.shape[2] * s.shape[3])
        if tuple(t.shape) != expected:
            raise ValueError(f"teacher[{m}]: expected a raw feature of shape {tuple(s.shape)} or a "
                             f"summary of shape {expected}, got {tuple(t.shape)}")
    maps = [t.detach().to(acc).contiguous() for t in maps]
    lam = layer_weights(lambdas, len(student), student[0], acc)
    loss, _, _ = torch.ops.hyperkd.at_loss(student, maps, lam, kind, float(p), float(eps),
                                           reduction == "mean")
    return loss


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
