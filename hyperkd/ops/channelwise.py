"""Fused per-channel KD losses as ``torch.ops.hyperkd`` ops: channel-wise distillation (CwD,
LayerKD-HN Eq. 20–21) and FitNets (Eq. 11). Both reduce each (sample, channel) row of student and
teacher over its H·W positions; the teacher is kept raw (no smaller statistic determines these
losses). Autograd saves the inputs and per-row statistics only (log-sum-exps, norms): never a
softmax or a difference of feature size. CPU kernels are C++ (``csrc/cpu/channelwise.cpp``), CUDA
kernels Triton (``kernels/channelwise.py``).
"""
import torch
from torch import nn

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import channelwise as triton_cw
from hyperkd.ops._checks import (accumulation_dtype, as_layer_list, check_features, check_number,
                                 check_pairs, layer_weights)

torch.library.register_kernel("hyperkd::cwd_loss", "cuda", triton_cw.cwd_loss)
torch.library.register_kernel("hyperkd::cwd_loss_backward", "cuda", triton_cw.cwd_loss_backward)
torch.library.register_kernel("hyperkd::fitnets_loss", "cuda", triton_cw.fitnets_loss)
torch.library.register_kernel("hyperkd::fitnets_loss_backward", "cuda", triton_cw.fitnets_loss_backward)


def _row_stats_like(student):
    acc = accumulation_dtype(student[0].dtype)
    rows = sum(f.shape[0] * f.shape[1] for f in student)
    return student[0].new_empty(len(student), dtype=acc), student[0].new_empty(rows, dtype=acc)


@torch.library.register_fake("hyperkd::cwd_loss")
def _cwd_loss_fake(student, teacher, tau):
    losses, stats = _row_stats_like(student)
    return losses, stats, torch.empty_like(stats)


@torch.library.register_fake("hyperkd::fitnets_loss")
def _fitnets_loss_fake(student, teacher):
    return _row_stats_like(student)


@torch.library.register_fake("hyperkd::cwd_loss_backward")
def _cwd_loss_backward_fake(grad, student, teacher, lse_s, lse_t, tau):
    return [torch.empty_like(f) for f in student]


@torch.library.register_fake("hyperkd::fitnets_loss_backward")
def _fitnets_loss_backward_fake(grad, student, teacher, norms):
    return [torch.empty_like(f) for f in student]


def _setup_context(ctx, inputs, output):
    student, teacher, *options = inputs
    stats = output[1:]
    ctx.mark_non_differentiable(*stats)
    ctx.layers, ctx.options = len(student), options
    ctx.save_for_backward(*student, *teacher, *stats)


def _backward_with(backward_op):
    def backward(ctx, grad, *_stats):
        saved, M = ctx.saved_tensors, ctx.layers
        grads = backward_op(grad, saved[:M], saved[M:2 * M], *saved[2 * M:], *ctx.options)
        return (list(grads), [None] * M) + (None,) * len(ctx.options)
    return backward


torch.library.register_autograd("hyperkd::cwd_loss", _backward_with(torch.ops.hyperkd.cwd_loss_backward),
                                setup_context=_setup_context)
torch.library.register_autograd("hyperkd::fitnets_loss",
                                _backward_with(torch.ops.hyperkd.fitnets_loss_backward),
                                setup_context=_setup_context)


def _paired(student, teacher):
    student = as_layer_list(student, "student")
    teacher = as_layer_list(teacher, "teacher")
    check_features(student, "student")
    check_pairs(student, teacher)
    for m, (s, t) in enumerate(zip(student, teacher)):
        if t.dim() != 4:
            raise ValueError(f"teacher[{m}]: expected the raw B×C×H×W feature of shape "
                             f"{tuple(s.shape)}, got shape {tuple(t.shape)}")
    return student, [t.detach().to(s.dtype) for s, t in zip(student, teacher)]


def cwd_losses(student, teacher, *, tau: float = 4.0) -> torch.Tensor:
    """Per-layer CwD terms τ²/(C·B) Σ_{i,c} KL(softmax(g_ic/τ) ‖ softmax(f_ic/τ)) (Eq. 20–21),
    softmax over the H·W positions of each channel; an M-vector."""
    tau = check_number(tau, "tau", minimum=0.0, strict=True)
    student, teacher = _paired(student, teacher)
    return torch.ops.hyperkd.cwd_loss(student, teacher, tau)[0]


def cwd_loss(student, teacher, *, tau: float = 4.0, lambdas=None) -> torch.Tensor:
    """Σ_m λ_m L_CwD,m in one fused call."""
    terms = cwd_losses(student, teacher, tau=tau)
    return (layer_weights(lambdas, terms.numel(), terms, terms.dtype) * terms).sum()


def fitnets_losses(student, teacher) -> torch.Tensor:
    """Per-layer FitNets terms Σ_{i,c} ‖vec(f_ic) − vec(g_ic)‖₂ (Eq. 11); an M-vector."""
    student, teacher = _paired(student, teacher)
    return torch.ops.hyperkd.fitnets_loss(student, teacher)[0]


def fitnets_loss(student, teacher, *, lambdas=None) -> torch.Tensor:
    """Σ_m λ_m L_FitNets,m in one fused call."""
    terms = fitnets_losses(student, teacher)
    return (layer_weights(lambdas, terms.numel(), terms, terms.dtype) * terms).sum()


class ChannelWiseDistillationLoss(nn.Module):
    """Module form of :func:`cwd_loss` with a fixed temperature τ."""

    def __init__(self, tau: float = 4.0):
        super().__init__()
        self.tau = check_number(tau, "tau", minimum=0.0, strict=True)

    def forward(self, student, teacher, lambdas=None):
        return cwd_loss(student, teacher, tau=self.tau, lambdas=lambdas)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class FitNetsLoss(nn.Module):
    """Module form of :func:`fitnets_loss`; with ``regressor_channels=(c_student, c_teacher)`` a
    1×1 convolution maps the student feature to the teacher's channel count first (Romero et al.),
    for a single tapped layer whose channel counts differ."""

    def __init__(self, regressor_channels=None):
        super().__init__()
        self.regressor = None if regressor_channels is None else nn.Conv2d(*regressor_channels, 1, bias=False)

    def forward(self, student, teacher, lambdas=None):
        if self.regressor is not None:
            student = self.regressor(student)
        return fitnets_loss(student, teacher, lambdas=lambdas)
