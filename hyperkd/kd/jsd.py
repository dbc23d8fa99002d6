"""The JSD map KD method of layer-wise learning rates (§3.1–3.4), registered as
``jsd:map=attention|jacobian|hessian``.

At each crucial layer the student's and the teacher's maps become distributions and L_m is the
batch mean of their Jensen–Shannon divergence (:mod:`hyperkd.ops.jsd_map`, fused). The L_m are
both the KD loss (§3.1, Eq. 2/4/6) and what :class:`hyperkd.train.layer_lr.LayerLR` reads to set
the layers' rates (Eq. 11–12).

- ``map=attention``: the AT map Σ_c |f_c|^p of the tapped conv outputs (p = 2 by default); an
  ordinary tap method (teacher summary = its distributions).
- ``map=jacobian`` / ``map=hessian``: ∂s/∂W_j or Hutchinson's diag ∂²s/∂W_j² of the crucial convs'
  weights (:mod:`hyperkd.kd.maps`), normalised |map|. These need the nets themselves, not their
  tapped outputs: call :meth:`JSDMapKD.attach` once with both nets and the crucial layers, and
  :meth:`bind` with each batch (``DistillStep`` calls ``bind(x, x, y)`` for methods that have it).
  ``response=auto`` is the true-class logit for Jacobian maps and the loss for Hessian maps (see
  :mod:`hyperkd.kd.maps` for why); ``per=batch`` takes one map of Σ_i s_i per batch.
"""
from typing import Optional, Sequence

import torch

from hyperkd.kd.base import LayerwiseMethod
from hyperkd.kd.maps import hessian_diagonal_maps, jacobian_maps
from hyperkd.kd.registry import MethodEntry, register
from hyperkd.ops import jsd_map as jsd_ops

MAPS = ("attention", "jacobian", "hessian")
PER = ("sample", "batch")
RESPONSES = ("auto", "logit", "loss", "logits")
DEFAULT_RESPONSE = {"jacobian": "logit", "hessian": "loss"}


class JSDMapKD(LayerwiseMethod):
    """Σ_m λ_m mean_i JSD(P_s,m,i ‖ P_t,m,i) over the crucial layers (see the module docstring)."""

    native_reduction = "mean"
    #: The crucial layers of the pair (:func:`hyperkd.kd.crucial.crucial_layers`), found by the driver.
    default_tap = "crucial"

    def __init__(self, map: str = "attention", p: float = 2.0, normalise: str = "abs",
                 response: str = "auto", per: str = "sample", probes: float = 1.0):
        if map not in MAPS:
            raise ValueError(f"map: expected one of {', '.join(MAPS)}, got {map!r}")
        if probes != int(probes) or probes < 1:
            raise ValueError(f"probes: expected a positive integer, got {probes!r}")
        for name, value, valid in (("normalise", normalise, jsd_ops.NORMALISATIONS), ("per", per, PER),
                                   ("response", response, RESPONSES)):
            if value not in valid:
                raise ValueError(f"{name}: expected one of {', '.join(valid)}, got {value!r}")
        self.map, self.p, self.normalise, self.per, self.probes = map, p, normalise, per, int(probes)
        self.response = DEFAULT_RESPONSE.get(map) if response == "auto" else response
        self.name = f"jsd:map={map}"
        self._nets = None
        self._batch = None

    # --- the derivative maps' nets and batch -------------------------------------------------
    def attach(self, student: torch.nn.Module, teacher: torch.nn.Module, student_layers: Sequence[str],
               teacher_layers: Optional[Sequence[str]] = None) -> "JSDMapKD":
        """The nets and crucial layers whose weights the Jacobian/Hessian maps differentiate."""
        self._nets = (student, teacher, list(student_layers), list(teacher_layers or student_layers))
        return self

    def bind(self, student_inputs: torch.Tensor, teacher_inputs: torch.Tensor, labels: torch.Tensor):
        """The batch of the coming step (derivative maps only; attention maps ignore it)."""
        self._batch = (student_inputs, teacher_inputs, labels)
        return self

    def _maps(self, net, layers, x, y):
        options = dict(response_kind=self.response, per_sample=self.per == "sample")
        if self.map == "jacobian":
            return jacobian_maps(net, layers, x, y, **options)
        return hessian_diagonal_maps(net, layers, x, y, probes=self.probes, **options)

    def derivative_maps(self):
        """(student maps, differentiable; teacher maps, detached) of the bound batch."""
        if self._nets is None or self._batch is None:
            raise RuntimeError(f"{self.name}: call attach(student, teacher, layers) once and "
                               f"bind(x_student, x_teacher, labels) per batch first")
        student, teacher, s_layers, t_layers = self._nets
        x_s, x_t, y = self._batch
        teacher_maps = [m.detach() for m in self._maps(teacher, t_layers, x_t.detach(), y)]
        return self._maps(student, s_layers, x_s.detach(), y), teacher_maps

    # --- LayerwiseMethod ----------------------------------------------------------------------
    def summarise(self, g, layer):
        if self.map != "attention":
            return g.new_empty(0)  # the derivative maps are taken after both forwards
        return jsd_ops.jsd_map_teacher_summary(g, kind=1, p=self.p, normalise=self.normalise)

    def native_weighted(self, student, summaries, lambdas):
        if self.map == "attention":
            return jsd_ops.jsd_map_terms(student, summaries, kind=1, p=self.p, normalise=self.normalise,
                                         lambdas=lambdas, teacher_summarised=True)
        student_maps, teacher_maps = self.derivative_maps()
        return jsd_ops.jsd_map_terms(student_maps, teacher_maps, kind=0, normalise=self.normalise,
                                     lambdas=lambdas)


def _positive(x):
    return x > 0


register("jsd", MethodEntry(
    JSDMapKD, {"map": "attention", "p": 2.0, "normalise": "abs", "response": "auto", "per": "sample",
               "probes": 1.0},
    {"p": (_positive, "> 0"), "probes": (lambda k: k >= 1 and k == int(k), "a positive integer")},
    "JSD of student/teacher attention, Jacobian or Hessian maps at the crucial layers "
    "(layer-wise learning rates, Eq. 8-10)",
    choices={"map": MAPS, "normalise": jsd_ops.NORMALISATIONS, "response": RESPONSES, "per": PER}))
