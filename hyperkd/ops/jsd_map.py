"""Fused Jensen–Shannon map loss (layer-wise learning rates, §3.4 Eq. 8–10) as ``torch.ops.hyperkd`` ops.

Each layer's student entry is a B×C×H×W feature, whose map is S = Σ_c |f_c|^p (the attention map;
``kind=0`` is p = 1), or a B×N map such as a Jacobian or Hessian map, read as one channel:
S = |map|^p. Per sample S becomes a distribution P (S/ΣS, or softmax S with
``normalise="softmax"``), and L_m is the batch mean (or sum) of JSD(P‖Q) with the teacher's Q,
an ε floor inside the logarithms (:mod:`hyperkd.reference.jsd_map` spells the equations).

``jsd_map_loss`` computes Σ_m λ_m L_m over all layers in one call and, like the attention-transfer
op, the gradients of that sum in the same pass over each row (:mod:`hyperkd.ops._forward_grads`):
they are all that backward keeps. CPU kernels are C++ (``csrc/cpu/jsd_map.cpp``), CUDA kernels
Triton (``kernels/jsd_map.py``). The teacher is a constant target: no gradient flows to it.
"""
import torch
from torch import nn

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import jsd_map as triton_jsd
from hyperkd.ops._checks import accumulation_dtype, as_layer_list, check_features, check_number
from hyperkd.ops._forward_grads import call_weighted, fake_outputs, register_forward_grad_autograd

EPS = 1e-8
NORMALISATIONS = ("abs", "softmax")
REDUCTIONS = ("mean", "sum")

torch.library.register_kernel("hyperkd::jsd_map_summary", "cuda", triton_jsd.jsd_map_summary)
torch.library.register_kernel("hyperkd::jsd_map_loss", "cuda", triton_jsd.jsd_map_loss)


@torch.library.register_fake("hyperkd::jsd_map_summary")
def _jsd_map_summary_fake(feats, p, softmax, eps):
    acc = accumulation_dtype(feats[0].dtype)
    return [f.new_empty(f.shape[0], f.shape[2] * f.shape[3], dtype=acc) for f in feats]


@torch.library.register_fake("hyperkd::jsd_map_loss")
def _jsd_map_loss_fake(student, teacher, lambdas, p, softmax, eps, mean, with_grad):
    return fake_outputs(student, with_grad, scalar=True)


register_forward_grad_autograd("hyperkd::jsd_map_loss")


def _exponent(kind, p) -> float:
    """The map's exponent: kind 0 is Σ|f| (p = 1), kind 1 Σ|f|^p."""
    if kind not in (0, 1) or isinstance(kind, bool):
        raise ValueError(f"kind: expected 0 (Σ|f|) or 1 (Σ|f|^p), got {kind!r}")
    return 1.0 if kind == 0 else check_number(p, "p", minimum=0.0, strict=True)


def _check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _as_features(maps, name: str) -> list:
    """Each entry as a contiguous B×C×H×W feature: a B×N map becomes B×1×1×N."""
    feats = []
    for m, t in enumerate(as_layer_list(maps, name)):
        if t.dim() == 2:
            t = t[:, None, None, :]
        elif t.dim() != 4:
            raise ValueError(f"{name}[{m}]: expected a B×C×H×W feature or a B×N map, got shape {tuple(t.shape)}")
        feats.append(t.contiguous())
    check_features(feats, name)
    return feats


def jsd_map_teacher_summary(g, *, kind: int = 1, p: float = 2.0, normalise: str = "abs", eps: float = EPS):
    """The teacher's distributions Q, B×N per layer (one tensor or a list, as given), computed
    without autograd so the teacher's activations can be freed at once."""
    p = _exponent(kind, p)
    _check_choice(normalise, "normalise", NORMALISATIONS)
    eps = check_number(eps, "eps", minimum=0.0, strict=True)
    feats = _as_features(g, "g")
    with torch.no_grad():
        out = torch.ops.hyperkd.jsd_map_summary([f.detach() for f in feats], p, normalise == "softmax", eps)
    return out[0] if isinstance(g, torch.Tensor) else list(out)


def jsd_map_terms(student, teacher, *, kind: int = 1, p: float = 2.0, normalise: str = "abs",
                  lambdas=None, reduction: str = "mean", eps: float = EPS, teacher_summarised: bool = False):
    """(Σ_m λ_m L_m, the unweighted L_m) from one fused call; see the module docstring.

    ``teacher`` holds, per layer, the raw feature or map (the student's shape), or with
    ``teacher_summarised`` its distribution from :func:`jsd_map_teacher_summary` (B×N). The loss
    is fp32 (fp64 for fp64 inputs).
    """
    p = _exponent(kind, p)
    _check_choice(normalise, "normalise", NORMALISATIONS)
    _check_choice(reduction, "reduction", REDUCTIONS)
    eps = check_number(eps, "eps", minimum=0.0, strict=True)
    raw_student = as_layer_list(student, "student")
    feats = _as_features(raw_student, "student")
    teacher = as_layer_list(teacher, "teacher")
    if len(teacher) != len(feats):
        raise ValueError(f"teacher: expected {len(feats)} layers to match student, got {len(teacher)}")
    if not teacher_summarised:
        for m, (s, t) in enumerate(zip(raw_student, teacher)):
            if t.shape != s.shape:
                raise ValueError(f"layer {m}: student shape {tuple(s.shape)} and teacher shape "
                                 f"{tuple(t.shape)} differ")
        teacher = jsd_map_teacher_summary([t.to(s.dtype) for s, t in zip(raw_student, teacher)],
                                          kind=1, p=p, normalise=normalise, eps=eps)
    acc = accumulation_dtype(feats[0].dtype)
    for m, (s, t) in enumerate(zip(feats, teacher)):
        expected = (s.shape[0], s.shape[2] * s.shape[3])
        if tuple(t.shape) != expected:
            raise ValueError(f"teacher[{m}]: expected a distribution of shape {expected}, got {tuple(t.shape)}")
        if t.device != s.device:
            raise ValueError(f"teacher[{m}]: device {t.device} differs from student[{m}]'s {s.device}")
    summaries = [t.detach().to(acc).contiguous() for t in teacher]
    return call_weighted(torch.ops.hyperkd.jsd_map_loss, feats, summaries, lambdas, p,
                         normalise == "softmax", eps, reduction == "mean")


def jsd_map_loss(student, teacher, **options) -> torch.Tensor:
    """Σ_m λ_m L_m of the JSD map loss over a list of layers (see :func:`jsd_map_terms`)."""
    return jsd_map_terms(student, teacher, **options)[0]


class JSDMapLoss(nn.Module):
    """Module form of :func:`jsd_map_loss` with fixed map, normalisation and reduction."""

    def __init__(self, kind: int = 1, p: float = 2.0, normalise: str = "abs", reduction: str = "mean",
                 eps: float = EPS):
        super().__init__()
        _exponent(kind, p)
        _check_choice(normalise, "normalise", NORMALISATIONS)
        _check_choice(reduction, "reduction", REDUCTIONS)
        self.options = dict(kind=kind, p=p, normalise=normalise, reduction=reduction, eps=eps)

    def forward(self, student, teacher, lambdas=None):
        return jsd_map_loss(student, teacher, lambdas=lambdas, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
