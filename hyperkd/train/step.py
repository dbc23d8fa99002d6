"""One distillation step as one module, in the order of LayerKD-HN Algorithm 1:

1. the batch, in the student's memory format (and, for JacobianKD, requiring its gradient);
2. the teacher's forward, without autograd: its taps keep only each method's summary;
3. the student's forward; a hypernetised student first generates every conv weight from γ;
   its taps keep the raw features (the loss needs their graph);
4. the losses: λ0·CE + Σ_k Σ_m λ_{k,m} L_{k,m}, one fused call per KD term k (the term's weight β_k
   folded into its λ).

``DistillStep.forward(x, y, epoch)`` returns a :class:`StepOutput`: the logits, the total loss to
backpropagate, and the named detached terms for the log (``ce`` raw; ``kd/<term>`` its weighted
sum; ``kd/<term>/<layer>`` each raw L_m). Without KD terms the loss is CE alone (the MIP baseline).
"""
import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from hyperkd.kd.layerkd import LayerKD


@dataclass
class StepOutput:
    """What a training step hands to the loop: ``loss`` is minimised, ``terms`` (detached scalars,
    in a fixed order) are checked for NaN/inf and logged; ``logits`` give the train accuracy
    (None for steps that do not classify, e.g. weight reconstruction)."""
    logits: Optional[torch.Tensor]
    loss: torch.Tensor
    terms: "OrderedDict[str, torch.Tensor]" = field(default_factory=OrderedDict)

    @classmethod
    def of(cls, logits, terms: Mapping[str, torch.Tensor], logs: Optional[Mapping[str, torch.Tensor]] = None):
        """A step whose loss is the sum of ``terms``; ``logs`` are logged but not minimised."""
        loss = sum(terms.values())
        logged = OrderedDict((k, v.detach()) for k, v in terms.items())
        logged.update((k, v.detach()) for k, v in (logs or {}).items())
        return cls(logits, loss, logged)


@dataclass
class KDTerm:
    """One KD method of a step: its label in the log, its LayerKD and its weight: a number (β·w_k),
    or a weighting rule (a module with ``weight`` and ``update``, such as
    :class:`~hyperkd.kd.gnorp.GNoRP`) whose λ is multiplied by ``scale`` (w_k)."""
    label: str
    layerkd: LayerKD
    weight: object = 1.0
    scale: float = 1.0

    @property
    def adaptive(self) -> bool:
        return isinstance(self.weight, nn.Module)

    def current_weight(self):
        return self.weight.weight * self.scale if self.adaptive else self.weight


class DistillStep(nn.Module):
    """λ0·CE(student(x), y) + Σ_k β_k Σ_m λ_{k,m} L_{k,m} for one batch (see the module docstring).

    ``student``: the net to call (possibly DDP-wrapped); ``generate``: a hypernetised student is
    called as ``student(x, gamma)`` with ``gamma`` None (sampled per step) or fixed. ``teacher``:
    the frozen teacher, or None without KD. ``terms``: the KD terms, whose LayerKDs tap the two
    nets. ``epochs``: N, for the λ schedules. ``autocast``: a ``torch.autocast`` context or None.
    """

    def __init__(self, student: Callable, teacher: Optional[nn.Module] = None, terms: Sequence[KDTerm] = (),
                 *, epochs: int, lambda0: float = 0.1, generate: bool = False, gamma: Optional[float] = None,
                 autocast=None, memory_format=torch.contiguous_format):
        super().__init__()
        if terms and teacher is None:
            raise ValueError("teacher: KD terms need a teacher")
        labels = [t.label for t in terms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"kd: a method is named twice ({labels}); give each --kd once")
        self.student, self.teacher = student, teacher
        self.kd_terms = list(terms)
        # Registered so that regressors (adapters) and FT's translators move and checkpoint with it.
        self.layerkds = nn.ModuleList(t.layerkd for t in self.kd_terms)
        self.weightings = nn.ModuleList(t.weight for t in self.kd_terms if t.adaptive)
        #: Callables given each step's detached terms (e.g. :meth:`hyperkd.train.layer_lr.LayerLR.observe`).
        self.observers: List[Callable[[Mapping[str, torch.Tensor]], None]] = []
        self.epochs, self.lambda0 = epochs, lambda0
        self.generate, self.gamma = generate, gamma
        self.autocast = autocast if autocast is not None else contextlib.nullcontext()
        self.memory_format = memory_format
        self.cross_entropy = nn.CrossEntropyLoss()
        methods = [t.layerkd.method for t in self.kd_terms]
        self._teacher_graph = any(m.summary_needs_graph for m in methods)
        # Methods that read more of the batch than the tapped features: the labels
        # (``bind_batch``, e.g. DKD), or the inputs themselves (``bind``: JacobianKD, which also
        # differentiates w.r.t. them, and the JSD derivative maps).
        self._batch_binds = [m for m in methods if hasattr(m, "bind_batch")]
        self._binds = [m for m in methods if hasattr(m, "bind") and not hasattr(m, "bind_batch")]

    def run_student(self, x: torch.Tensor, gamma=None) -> torch.Tensor:
        return self.student(x, self.gamma if gamma is None else gamma) if self.generate else self.student(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The logits for evaluation: a hypernetised student generates at the training γ when it
        is fixed, else at γ = 0.5."""
        return self.run_student(x.to(memory_format=self.memory_format), 0.5 if self.gamma is None else None)

    def capture(self, x: torch.Tensor):
        """Runs teacher and student on ``x``; returns (logits, [(student, teacher) capture per term])."""
        with contextlib.ExitStack() as stack:
            teacher = [stack.enter_context(t.layerkd.teacher_taps.capture()) for t in self.kd_terms]
            if self.teacher is not None:
                with torch.set_grad_enabled(self._teacher_graph):
                    self.teacher(x)
        with contextlib.ExitStack() as stack:
            student = [stack.enter_context(t.layerkd.student_taps.capture()) for t in self.kd_terms]
            logits = self.run_student(x)
        return logits, list(zip(student, teacher))

    def forward(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> StepOutput:
        x = x.to(memory_format=self.memory_format)
        if self._teacher_graph:  # JacobianKD differentiates both nets w.r.t. the input
            x = x.requires_grad_()
        for method in self._binds:
            method.bind(x, x, y)
        for method in self._batch_binds:
            method.bind_batch(y)
        with self.autocast:
            logits, captures = self.capture(x)
            ce = self.cross_entropy(logits.float(), y)
            if not self.kd_terms:
                return StepOutput(logits, ce, OrderedDict(ce=ce.detach()))
            main = self.lambda0 * ce
            loss = main
            terms = OrderedDict(ce=ce.detach())
            for term, (student, teacher) in zip(self.kd_terms, captures):
                weight = term.current_weight()
                total, per_layer = term.layerkd(student, teacher, epoch, self.epochs, weight=weight)
                if term.adaptive:
                    # GNoRP steps λ on this batch's gradient norms at z (the tapped student
                    # features); the student's own update then uses the updated λ.
                    stats = term.weight.update(main, total / weight, student.values())
                    total = total * (term.current_weight() / weight)
                    terms.update((f"gnorp/{term.label}/{k}", v) for k, v in stats.items())
                loss = loss + total
                terms[f"kd/{term.label}"] = total.detach()
                terms.update((f"kd/{term.label}/{name}", value)
                             for name, value in zip(term.layerkd.term_names(), per_layer.unbind()))
        for observe in self.observers:
            observe(terms)
        return StepOutput(logits, loss, terms)

    def lambdas(self, epoch: int) -> Dict[str, list]:
        """λ_m of every KD term at ``epoch``."""
        return {t.label: t.layerkd.lambdas(epoch, self.epochs) for t in self.kd_terms}

    def epoch_record(self, epoch: int) -> dict:
        """What the log records of the step before ``epoch`` trains: each term's λ_m."""
        return {"lambdas": self.lambdas(epoch)} if self.kd_terms else {}

    @torch.no_grad()
    def bind_shapes(self, example: torch.Tensor) -> None:
        """Runs both nets once on ``example`` (eval mode, RNG untouched) and checks every pair of
        tapped shapes before training starts; builds the regressors that ``--adapter 1x1`` asks for."""
        if not self.kd_terms:
            return
        nets = [m for m in (self.student, self.teacher) if isinstance(m, nn.Module)]
        modes = [m.training for m in nets]
        devices = [example.device] if example.device.type == "cuda" else []
        try:
            for m in nets:
                m.eval()
            with torch.random.fork_rng(devices=devices), torch.set_grad_enabled(self._teacher_graph):
                x = example.to(memory_format=self.memory_format).clone().requires_grad_(self._teacher_graph)
                labels = torch.zeros(len(x), dtype=torch.long, device=x.device)
                for method in self._binds:
                    method.bind(x, x, labels)
                for method in self._batch_binds:
                    method.bind_batch(labels)
                with self.autocast:
                    _, captures = self.capture(x)
                for term, (student, teacher) in zip(self.kd_terms, captures):
                    term.layerkd.bind_shapes(student.shape_list(), teacher.shape_list())
        finally:
            for m, mode in zip(nets, modes):
                m.train(mode)

    def remove(self) -> None:
        """Unhooks both nets (the hooks tie student and teacher into reference cycles)."""
        for term in self.kd_terms:
            term.layerkd.remove()
