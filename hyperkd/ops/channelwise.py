"""Fused per-channel KD losses as ``torch.ops.hyperkd`` ops: channel-wise distillation (CwD,
LayerKD-HN Eq. 20–21) and FitNets (Eq. 11). Both reduce each (sample, channel) row of student and
teacher over its H·W positions; the teacher is kept raw (no smaller statistic determines these
losses). Each op returns λ_m L_m and L_m per layer, and computes the gradients of Σ_m λ_m L_m in
forward, row by row while the row's exps or differences are in cache
(:mod:`hyperkd.ops._forward_grads`): those gradients are all that backward keeps, never a softmax
or a difference of feature size. CPU kernels are C++ (``csrc/cpu/channelwise.cpp``), CUDA kernels
Triton (``kernels/channelwise.py``).
"""
import torch
from torch import nn

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import channelwise as triton_cw
from hyperkd.ops._checks import as_layer_list, check_features, check_number, check_pairs
from hyperkd.ops._forward_grads import call_weighted, fake_outputs, register_forward_grad_autograd

torch.library.register_kernel("hyperkd::cwd_loss", "cuda", triton_cw.cwd_loss)
torch.library.register_kernel("hyperkd::fitnets_loss", "cuda", triton_cw.fitnets_loss)


@torch.library.register_fake("hyperkd::cwd_loss")
def _cwd_loss_fake(student, teacher, lambdas, tau, with_grad):
    return fake_outputs(student, with_grad, scalar=False)


@torch.library.register_fake("hyperkd::fitnets_loss")
def _fitnets_loss_fake(student, teacher, lambdas, with_grad):
    return fake_outputs(student, with_grad, scalar=False)


register_forward_grad_autograd("hyperkd::cwd_loss")
register_forward_grad_autograd("hyperkd::fitnets_loss")


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


def _weighted_terms(op, student, teacher, lambdas, *options):
    """(λ_m L_m, L_m) per layer from one fused call; the first is differentiable."""
    return call_weighted(op, *_paired(student, teacher), lambdas, *options)


def cwd_terms(student, teacher, *, tau: float = 4.0, lambdas=None):
    """(λ_m L_CwD,m, L_CwD,m) per layer (Eq. 20–21), see :func:`cwd_losses`."""
    tau = check_number(tau, "tau", minimum=0.0, strict=True)
    return _weighted_terms(torch.ops.hyperkd.cwd_loss, student, teacher, lambdas, tau)


def cwd_losses(student, teacher, *, tau: float = 4.0) -> torch.Tensor:
    """Per-layer CwD terms τ²/(C·B) Σ_{i,c} KL(softmax(g_ic/τ) ‖ softmax(f_ic/τ)) (Eq. 20–21),
    softmax over the H·W positions of each channel; an M-vector."""
    return cwd_terms(student, teacher, tau=tau)[0]


def cwd_loss(student, teacher, *, tau: float = 4.0, lambdas=None) -> torch.Tensor:
    """Σ_m λ_m L_CwD,m in one fused call."""
    return cwd_terms(student, teacher, tau=tau, lambdas=lambdas)[0].sum()


def fitnets_terms(student, teacher, *, lambdas=None):
    """(λ_m L_FitNets,m, L_FitNets,m) per layer (Eq. 11), see :func:`fitnets_losses`."""
    return _weighted_terms(torch.ops.hyperkd.fitnets_loss, student, teacher, lambdas)


def fitnets_losses(student, teacher) -> torch.Tensor:
    """Per-layer FitNets terms Σ_{i,c} ‖vec(f_ic) − vec(g_ic)‖₂ (Eq. 11); an M-vector."""
    return fitnets_terms(student, teacher)[0]


def fitnets_loss(student, teacher, *, lambdas=None) -> torch.Tensor:
    """Σ_m λ_m L_FitNets,m in one fused call."""
    return fitnets_terms(student, teacher, lambdas=lambdas)[0].sum()


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
