"""Layer-wise learning rates driven by the divergence of student and teacher maps (§3.4, Eq. 11–12).

The crucial layers each get their own optimizer parameter group, the rest of the student shares
one. Every K epochs (the paper: 25) each crucial layer's rate η_j is updated from its mean map
divergence L̄_j over those K epochs, so that a larger divergence gives a smaller rate, with
momentum μ on the rate and an ε in the denominator. The paper's equations were lost; the prose
fixes that much, and the rule is a small named function so each reading can be swapped in:

- ``"ema_inverse"`` (default, ours):  m_j ← λ·L̄_j + (1−λ)·m_j;  η_j ← μ·η_j + (1−μ)·η₀/(m_j + ε)
- ``"relative"`` (ours): as above with η₀·m̄/(m_j + ε), m̄ the mean of m over the crucial layers,
  so the rates stay around η₀ whatever the divergences' scale and only their ratios matter.

m_j starts at the first interval's L̄_j. ``max_scale`` optionally caps η_j at max_scale·η₀.

An outer schedule (MultiStepLR, cosine) still multiplies every group: an update rescales the
group's current lr by η_new/η_old and sets its base lr (``initial_lr`` and the scheduler's
``base_lrs``) to η_new, so the schedule's next steps start from the new rate.
"""
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

SHARED = "shared"


def ema_inverse(rates: Mapping[str, float], m: Mapping[str, float], divergence: Mapping[str, float],
                base_lr: float, *, lam: float, mu: float, eps: float) -> Tuple[dict, dict]:
    """m_j ← λ·L̄_j + (1−λ)·m_j;  η_j ← μ·η_j + (1−μ)·η₀/(m_j + ε). Returns (η, m)."""
    m = {j: lam * divergence[j] + (1 - lam) * m.get(j, divergence[j]) for j in rates}
    return {j: mu * rates[j] + (1 - mu) * base_lr / (m[j] + eps) for j in rates}, m


def relative(rates, m, divergence, base_lr, *, lam, mu, eps):
    """As :func:`ema_inverse` with η₀·m̄/(m_j + ε), m̄ the mean of the m_j."""
    m = {j: lam * divergence[j] + (1 - lam) * m.get(j, divergence[j]) for j in rates}
    mean = sum(m.values()) / len(m)
    return {j: mu * rates[j] + (1 - mu) * base_lr * mean / (m[j] + eps) for j in rates}, m


RULES: Dict[str, Callable] = {"ema_inverse": ema_inverse, "relative": relative}


class LayerLR:
    """Per-layer rates of the crucial layers (see the module docstring).

        layer_lr = LayerLR(every=25)
        optimizer = sgd(layer_lr.param_groups(student, ["conv1", "layer2.0.conv1"], lr=0.1), lr=0.1)
        scheduler = lr_schedule(optimizer, "multistep", epochs)
        ... each step:   layer_lr.observe({"conv1": L_conv1, ...})   # detached tensors, no sync
        ... each epoch:  record.update(layer_lr.end_epoch(epoch, optimizer, scheduler))
    """

    def __init__(self, every: int = 25, rule: str = "ema_inverse", lam: float = 0.5, mu: float = 0.9,
                 eps: float = 1e-8, max_scale: Optional[float] = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every: expected a positive number of epochs, got {every!r}")
        if rule not in RULES:
            raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")
        for name, value in (("lam", lam), ("mu", mu)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
        if not eps > 0:
            raise ValueError(f"eps: expected eps > 0, got {eps!r}")
        if max_scale is not None and not max_scale > 0:
            raise ValueError(f"max_scale: expected a positive factor or None, got {max_scale!r}")
        self.every, self.rule, self.lam, self.mu, self.eps, self.max_scale = every, rule, lam, mu, eps, max_scale
        self.layers: List[str] = []
        self.base_lr: Optional[float] = None
        self.rates: Dict[str, float] = {}
        self.m: Dict[str, float] = {}
        self._epoch_sums: Dict[str, torch.Tensor] = {}
        self._epoch_count = 0
        self._interval: Dict[str, List[float]] = {}

    def param_groups(self, student: nn.Module, layers: Sequence[str], lr: float) -> List[dict]:
        """A shared group with every parameter outside the crucial layers (first, so the loop's
        logged ``lr`` is the shared one), then one group per crucial layer (its module's
        parameters, named by the layer), all at ``lr`` = η₀."""
        if not lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
        modules = dict(student.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing or not layers:
            raise ValueError(f"layers: expected crucial layer names of the student, got {list(layers)}"
                             + (f" ({missing[0]!r} is not a module)" if missing else ""))
        self.layers, self.base_lr = list(layers), float(lr)
        self.rates = {j: float(lr) for j in self.layers}
        self.m, self._interval = {}, {j: [] for j in self.layers}
        taken = {id(p) for j in self.layers for p in modules[j].parameters()}
        groups = [{"params": list(modules[j].parameters()), "name": j, "lr": lr} for j in self.layers]
        shared = [p for p in student.parameters() if id(p) not in taken]
        return [{"params": shared, "name": SHARED, "lr": lr}] + groups

    def observe(self, divergences: Mapping[str, torch.Tensor]) -> None:
        """Adds one step's per-layer divergences (detached scalars; summed on their device)."""
        for j in self.layers:
            d, total = divergences[j].detach(), self._epoch_sums.get(j)
            self._epoch_sums[j] = d.clone() if total is None else total.to(d.device) + d
        self._epoch_count += 1

    def end_epoch(self, epoch: int, optimizer: torch.optim.Optimizer, scheduler=None) -> dict:
        """After 0-based ``epoch``: closes its mean divergences (one host sync), updates the rates
        when ``epoch + 1`` is a multiple of ``every``, and returns the record for metrics.jsonl:
        ``layer_divergence`` (this epoch's means) and ``layer_lr`` (the rates from now on)."""
        if not self.layers:
            raise RuntimeError("LayerLR: call param_groups(student, layers, lr) first")
        means = {}
        if self._epoch_count:
            values = torch.stack([self._epoch_sums[j].float() for j in self.layers]).cpu().tolist()
            means = {j: v / self._epoch_count for j, v in zip(self.layers, values)}
            for j in self.layers:
                self._interval[j].append(means[j])
        self._epoch_sums, self._epoch_count = {}, 0
        if (epoch + 1) % self.every == 0 and all(self._interval.values()):
            self._update(optimizer, scheduler)
        return {"layer_divergence": means, "layer_lr": dict(self.rates)}

    def _update(self, optimizer, scheduler) -> None:
        divergence = {j: sum(v) / len(v) for j, v in self._interval.items()}
        rates, self.m = RULES[self.rule](self.rates, self.m, divergence, self.base_lr,
                                          lam=self.lam, mu=self.mu, eps=self.eps)
        if self.max_scale is not None:
            rates = {j: min(r, self.max_scale * self.base_lr) for j, r in rates.items()}
        for index, group in enumerate(optimizer.param_groups):
            j = group.get("name")
            if j not in rates:
                continue
            group["lr"] *= rates[j] / self.rates[j]
            if "initial_lr" in group:
                group["initial_lr"] = rates[j]
            if scheduler is not None:
                scheduler.base_lrs[index] = rates[j]
        self.rates = rates
        self._interval = {j: [] for j in self.layers}

    def state_dict(self) -> dict:
        return {"layers": list(self.layers), "base_lr": self.base_lr, "rates": dict(self.rates),
                "m": dict(self.m), "interval": {j: list(v) for j, v in self._interval.items()},
                "epoch_sums": {j: t.cpu() for j, t in self._epoch_sums.items()},
                "epoch_count": self._epoch_count}

    def load_state_dict(self, state: dict) -> None:
        if state["layers"] != self.layers:
            raise ValueError(f"LayerLR: the checkpoint's layers {state['layers']} differ from {self.layers}")
        self.base_lr, self.rates, self.m = state["base_lr"], dict(state["rates"]), dict(state["m"])
        self._interval = {j: list(v) for j, v in state["interval"].items()}
        self._epoch_sums = dict(state["epoch_sums"])  # moved to the divergences' device by observe
        self._epoch_count = state["epoch_count"]

    def __repr__(self) -> str:
        return (f"LayerLR(every={self.every}, rule={self.rule!r}, lam={self.lam}, mu={self.mu}, "
                f"eps={self.eps}, layers={len(self.layers)})")


__all__ = ["LayerLR", "RULES", "SHARED", "ema_inverse", "relative"]
