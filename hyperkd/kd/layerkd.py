"""``LayerKD``: one KD method between paired tap points of a student and a teacher (LayerKD-HN
Algorithm 1 when both are the same architecture, tapped at every conv).

    layerkd = LayerKD("at0", student, teacher)            # every Conv2d of both nets
    with torch.no_grad(), layerkd.teacher_taps.capture() as t:
        teacher(x)
    with layerkd.student_taps.capture() as s:
        logits = student(x)
    total, terms = layerkd(s, t, epoch=n, epochs=N)       # Σ_m λ_m L_m and the detached L_m

Student and teacher may differ: the taps pair in order, and a pair whose shapes differ is an error
unless ``adapter="1x1"`` gives the student side a learned regressor (FitNets' 1×1 conv + BN, or a
Linear for B×D features) into the teacher's channels.
"""
from typing import List, Optional, Sequence

import torch
from torch import nn

from hyperkd.kd.layerwise import check_finite_terms
from hyperkd.kd.registry import make_method
from hyperkd.kd.schedules import Schedule, Uniform
from hyperkd.kd.taps import FeatureTaps, TapPoint, tap_points

ADAPTERS = ("none", "1x1")


def regressor(student_shape, teacher_shape) -> nn.Module:
    """FitNets' regressor from a student feature to the teacher's width: a 1×1 conv + BN for
    B×C×H×W features (same H×W), a Linear for B×D features."""
    if len(student_shape) == 4:
        return nn.Sequential(nn.Conv2d(student_shape[1], teacher_shape[1], 1, bias=False),
                             nn.BatchNorm2d(teacher_shape[1]))
    return nn.Linear(student_shape[1], teacher_shape[1])


def as_feature_map(f: torch.Tensor) -> torch.Tensor:
    """A B×D feature (penultimate) as the B×D×1×1 map that feature-map methods take: the SP and
    RKD Grams of the two are equal, and the AT map of a 1×1 map is constant."""
    return f[:, :, None, None] if f.dim() == 2 else f


def _adaptable(s, t) -> bool:
    """Whether a regressor can map a feature of shape ``s`` to one of shape ``t``."""
    return len(s) == len(t) and len(s) in (2, 4) and s[2:] == t[2:]


class LayerKD(nn.Module):
    """Σ_m λ_m L_m(r_m(f_m), g_m) over M paired tap points of ``student`` and ``teacher``.

    ``method``: a registry string (``hyperkd.kd.methods()``) or method object. ``layers``: the
    student's tap points (names or :class:`TapPoint`; default: the method's ``default_tap``, or
    every Conv2d); ``teacher_layers``: the teacher's, paired in order (default: the same kind of tap
    in the teacher, or the same names when ``layers`` are given). ``schedule``: λ_m as a function of
    (n, N, m, M), :class:`Uniform` by default. ``debug=True`` raises naming the first layer whose
    term is NaN or inf. The nets are hooked, not owned; :meth:`remove` unhooks them. The regressors
    r_m (``adapter="1x1"``) are submodules, built by :meth:`bind_shapes`.
    """

    def __init__(self, method, student: nn.Module, teacher: nn.Module, layers: Optional[Sequence] = None,
                 *, teacher_layers: Optional[Sequence] = None, tap: Optional[str] = None,
                 schedule: Schedule = None, adapter: str = "none", debug: bool = False):
        super().__init__()
        self.method = make_method(method)
        if adapter not in ADAPTERS:
            raise ValueError(f"adapter: expected one of {', '.join(ADAPTERS)}, got {adapter!r}")
        tap = tap or getattr(self.method, "default_tap", "conv")
        student_points = list(layers) if layers is not None else tap_points(student, tap)
        if teacher_layers is None:
            teacher_layers = student_points if layers is not None else tap_points(teacher, tap)
        teacher_points = list(teacher_layers)
        if not student_points:
            raise ValueError(f"layers: {type(student).__name__} has no {tap} tap point; name the layers")
        if len(student_points) != len(teacher_points):
            raise ValueError(f"tap {tap}: the student has {len(student_points)} tap points and the teacher "
                             f"{len(teacher_points)}; pair them by name (--pair student.name=teacher.name) "
                             f"or tap the penultimate features (--tap penultimate)")
        self.schedule = schedule if schedule is not None else Uniform()
        self.debug, self.adapter = debug, adapter
        self.student_taps = FeatureTaps(student, student_points, "student")
        self._as_input = as_feature_map if self.method.feature_rank == 4 else (lambda f: f)
        self.teacher_taps = FeatureTaps(teacher, teacher_points, "teacher",
                                        keep=lambda g, m: self.method.summarise(self._as_input(g), m),
                                        keep_graph=self.method.summary_needs_graph)
        self.regressors: Optional[nn.ModuleList] = None
        self._bound = False

    @property
    def layers(self) -> List[str]:
        return self.student_taps.names

    def term_names(self) -> List[str]:
        """One name per term: the student layer, or ``a->b`` for methods on adjacent pairs (FSP);
        ``s=t`` where the teacher's layer has another name."""
        names = [s if s == t else f"{s}={t}" for s, t in zip(self.layers, self.teacher_taps.names)]
        if self.method.pairs:
            return [f"{names[a]}->{names[b]}" for a, b in self.method.term_pairs(len(names))]
        return names

    def lambdas(self, epoch: int, epochs: int) -> List[float]:
        """λ_m at ``epoch``: the schedule's, times the method's own ramp where it has one (DKD's
        linear warm-up, ``method.warmup_factor(epoch)``)."""
        weights = self.schedule.weights(epoch, epochs, self.method.term_count(len(self.layers)))
        ramp = getattr(self.method, "warmup_factor", None)
        return [ramp(epoch) * w for w in weights] if ramp is not None else weights

    def bind_shapes(self, student_shapes, teacher_shapes) -> None:
        """Checks the paired shapes once, before training, and builds the regressors they need."""
        # Affinity KD compares B×B matrices: any two widths pair (``any_feature_shapes``).
        mismatched = [] if getattr(self.method, "any_feature_shapes", False) else \
            [(m, s, t) for m, (s, t) in enumerate(zip(student_shapes, teacher_shapes)) if tuple(s[1:]) != tuple(t[1:])]
        if self.adapter == "none" and mismatched:
            m, s, t = mismatched[0]
            raise ValueError(f"layer {self.term_names()[m]!r}: student feature {tuple(s)} and teacher "
                             f"feature {tuple(t)} differ in shape; pass --adapter 1x1 for a learned "
                             f"regressor, or pair other layers")
        if self.adapter == "1x1":
            for m, s, t in mismatched:
                if not _adaptable(s, t):
                    raise ValueError(f"layer {self.term_names()[m]!r}: a 1x1 regressor cannot map the "
                                     f"student feature {tuple(s)} onto the teacher's {tuple(t)} "
                                     f"(only the channel width may differ)")
            self.regressors = nn.ModuleList(regressor(s, t) if tuple(s[1:]) != tuple(t[1:]) else nn.Identity()
                                            for s, t in zip(student_shapes, teacher_shapes))
        self._bound = True

    def forward(self, student_feats, teacher_feats, epoch: int = 0, epochs: int = 1, weight: float = 1.0):
        """(weight · Σ_m λ_m L_m, the detached M-vector of L_m) for one captured batch.

        ``student_feats``/``teacher_feats``: the captures of :attr:`student_taps` and
        :attr:`teacher_taps` (or lists of tensors in tap order). ``weight`` (β) is folded into
        λ_m rather than applied to the result: the fused ops compute their gradients in forward
        for the loss they return, so a loss that reaches the total unscaled needs no second pass.
        """
        student = _as_list(student_feats)
        summaries = _as_list(teacher_feats)
        if not self._bound:
            self.bind_shapes([f.shape for f in student], _shapes(teacher_feats, summaries))
        if self.regressors is not None:
            student = [r(f) for r, f in zip(self.regressors, student)]
        student = [self._as_input(f) for f in student]
        lambdas = self.lambdas(epoch, epochs)
        if isinstance(weight, torch.Tensor):  # an adaptive weight (GNoRP's λ) stays on the device
            lambdas = weight * torch.tensor(lambdas, dtype=weight.dtype, device=weight.device)
        else:
            lambdas = [weight * lam for lam in lambdas]
        total, terms = self.method.weighted(student, summaries, lambdas)
        if self.debug:
            check_finite_terms(terms, self.term_names())
        return total, terms

    def remove(self) -> None:
        """Unhooks both nets."""
        self.student_taps.remove()
        self.teacher_taps.remove()

    def extra_repr(self) -> str:
        return f"method={self.method.name!r}, layers={len(self.layers)}, schedule={self.schedule!r}"


def _as_list(feats) -> list:
    return feats.values() if hasattr(feats, "values") and not isinstance(feats, dict) else list(feats)


def _shapes(teacher_feats, summaries) -> list:
    """The teacher's raw feature shapes: from the capture (its summaries have other shapes)."""
    if hasattr(teacher_feats, "shape_list"):
        return teacher_feats.shape_list()
    return [g.shape for g in summaries]


__all__ = ["ADAPTERS", "LayerKD", "TapPoint", "regressor"]
