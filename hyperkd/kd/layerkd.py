"""``LayerKD``: layer-wise KD between a student and a same-architecture teacher (Algorithm 1).

Both nets are tapped at the same module names (every Conv2d by default). Run the teacher (under
``torch.no_grad()``) and the student on the batch, then call the LayerKD module: it returns
Σ_m λ_m L_m with λ_m from the schedule at (epoch n, total N), and the per-layer terms for logging.
"""
from typing import Optional, Sequence

from torch import nn

from hyperkd.kd.layerwise import layerwise_terms
from hyperkd.kd.registry import make_method
from hyperkd.kd.schedules import Schedule, Uniform
from hyperkd.kd.taps import FeatureTaps, modules_of_type


class LayerKD(nn.Module):
    """Σ_m λ_m L_m(f_m, g_m) over tapped layers of ``student`` and ``teacher``.

    ``method``: a registry string (``hyperkd.kd.methods()``) or method object. ``layers``: module
    names tapped in both nets (default: every Conv2d of the student; name BatchNorm2d modules to
    tap after BN). ``schedule``: λ_m as a function of (n, N, m, M), :class:`Uniform` by default.
    ``debug=True`` checks each term and raises naming the first layer whose term is NaN or inf.
    The nets are hooked, not owned: they are not submodules, and :meth:`remove` unhooks them.
    """

    def __init__(self, method, student: nn.Module, teacher: nn.Module,
                 layers: Optional[Sequence[str]] = None, schedule: Schedule = None, debug: bool = False):
        super().__init__()
        self.method = make_method(method)
        self.layers = list(layers) if layers is not None else modules_of_type(student)
        if not self.layers:
            raise ValueError("layers: no module to tap (the student has no Conv2d; name the layers)")
        self.schedule = schedule if schedule is not None else Uniform()
        self.debug = debug
        self.student_taps = FeatureTaps(student, self.layers, "student")
        self.teacher_taps = FeatureTaps(teacher, self.layers, "teacher", keep=self.method.summarise,
                                        keep_graph=self.method.summary_needs_graph)

    def term_names(self):
        if self.method.pairs:
            return [f"{a}->{b}" for a, b in zip(self.layers, self.layers[1:])]
        return list(self.layers)

    def lambdas(self, epoch: int, epochs: int):
        return self.schedule.weights(epoch, epochs, self.method.term_count(len(self.layers)))

    def forward(self, epoch: int = 0, epochs: int = 1, weight: float = 1.0):
        """(weight · Σ_m λ_m L_m, {term name: detached L_m}) for the batch both nets last ran on.

        ``weight`` (the KD weight β) is folded into λ_m rather than applied to the result: the
        fused ops compute their gradients in forward for the loss they return, so a loss that
        reaches the total unscaled needs no second pass over them in backward."""
        student = self.student_taps.collected()
        teacher = self.teacher_taps.collected()
        for name, f in zip(self.layers, student):
            shape = self.teacher_taps.shapes[name]
            if tuple(f.shape) != shape:
                raise ValueError(f"layer {name!r}: student output shape {tuple(f.shape)} differs from "
                                 f"the teacher's {shape}")
        names = self.term_names()
        try:
            lambdas = [weight * lam for lam in self.lambdas(epoch, epochs)]
            total, terms = layerwise_terms(self.method, student, teacher, lambdas,
                                           teacher_summarised=True, check_finite=self.debug, names=names)
        finally:
            self.student_taps.clear()
            self.teacher_taps.clear()
        return total, dict(zip(names, terms.unbind()))

    def remove(self) -> None:
        """Unhooks both nets."""
        self.student_taps.remove()
        self.teacher_taps.remove()

    def extra_repr(self) -> str:
        return f"method={self.method.name!r}, layers={len(self.layers)}, schedule={self.schedule!r}"
