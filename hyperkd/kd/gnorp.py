"""GradNorm ratio preservation (GNoRP, Li & Maki §3.3, Eq. 15): the KD weight λ adjusted every
mini-batch so that the KD loss moves the features r times as hard as the main loss does.

    L_GNoRP(ℓ) = (r ‖∂L_main/∂z‖₂ − ‖∂(λ L_KD)/∂z‖₂)²,   λ = exp(ℓ)                    (Eq. 15)

z is the student's penultimate features (for layer-wise methods: every tapped student feature, the
norm taken over all of them together). ℓ has its own Adam with PyTorch's defaults, as the paper's
§4.5 says, separate from the student's optimiser. Since λ > 0, ‖∂(λ L_KD)/∂z‖ = λ ‖∂L_KD/∂z‖,
so Eq. 15's gradient in ℓ is analytic once the two norms are measured; measuring them costs two
``torch.autograd.grad`` calls w.r.t. z alone (the part of each graph above z), which keep the
graph for the student's own backward.

Ours, where the paper says nothing: the initial λ. With ``init=None`` (the default) ℓ is set at
the first update so that the ratio holds on the first batch (λ = r‖∂L_main/∂z‖ / ‖∂L_KD/∂z‖), and
Adam tracks it from there; a number starts λ there instead (Adam's default lr of 1e-3 then needs
about ln(λ*/init)/1e-3 steps to arrive). ``lr`` is Adam's, 1e-3 as PyTorch's default.
"""
import math

import torch
from torch import nn

_TINY = 1e-30  # keeps log(r‖g_main‖/‖g_kd‖) finite when a gradient vanishes


def _grad_norm(loss: torch.Tensor, z) -> torch.Tensor:
    """‖∂loss/∂z‖₂ over one tensor or all tensors of a list, without a host sync."""
    zs = [z] if isinstance(z, torch.Tensor) else list(z)
    grads = torch.autograd.grad(loss, zs, retain_graph=True, allow_unused=True)
    squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(squares).sum().sqrt() if squares else loss.new_zeros((), dtype=torch.float32)


class GNoRP(nn.Module):
    """λ = exp(ℓ) kept at the gradient-norm ratio ``r`` (Eq. 15); see the module docstring.

    Per step, before the student's backward: call :meth:`update` with the main loss, the
    *unweighted* KD loss and z; it steps ℓ on this batch's gradient norms. Then weigh the KD loss
    by :attr:`weight` (the current λ = exp(ℓ), a detached 0-dim tensor) for the student's update.
    ``update`` returns that λ and the ratio it gives on this batch, ‖∂(λ L_KD)/∂z‖ / ‖∂L_main/∂z‖,
    as tensors (no host sync).
    """

    def __init__(self, r: float, *, lr: float = 1e-3, init=None):
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0 or math.isinf(r):
            raise ValueError(f"r: expected a gradient-norm ratio r > 0, got {r!r}")
        if not lr > 0:
            raise ValueError(f"lr: expected Adam's learning rate > 0, got {lr!r}")
        if init is not None and not init > 0:
            raise ValueError(f"init: expected an initial λ > 0 (or None: set from the first batch), got {init!r}")
        self.r, self.lr, self.init = float(r), float(lr), init
        self.log_weight = nn.Parameter(torch.tensor(math.log(init) if init is not None else 0.0))
        # Whether ℓ has been set from a batch (init=None); a buffer so that it resumes.
        self.register_buffer("started", torch.tensor(init is not None))
        self.optimizer = torch.optim.Adam([self.log_weight], lr=self.lr)

    @property
    def weight(self) -> torch.Tensor:
        """The current λ = exp(ℓ), detached."""
        return self.log_weight.detach().exp()

    def update(self, main_loss: torch.Tensor, kd_loss: torch.Tensor, z) -> dict:
        """One Adam step on ℓ for Eq. 15 from this batch's gradient norms w.r.t. ``z`` (a tensor, or
        the list of tapped features); returns the new λ and the ratio it gives on this batch.
        ``kd_loss`` is unweighted; the graphs are kept for the student's backward."""
        zs = [z] if isinstance(z, torch.Tensor) else list(z)
        if self.log_weight.device != zs[0].device:
            self.to(zs[0].device)
        main_norm, kd_norm = _grad_norm(main_loss, zs), _grad_norm(kd_loss, zs)
        with torch.no_grad():
            fitted = torch.log(self.r * main_norm.clamp_min(_TINY) / kd_norm.clamp_min(_TINY))
            fitting = ~self.started
            self.log_weight.copy_(torch.where(self.started, self.log_weight, fitted))
            self.started.fill_(True)
        self.optimizer.zero_grad(set_to_none=True)
        objective = (self.r * main_norm - self.log_weight.exp() * kd_norm).pow(2)
        grad = torch.autograd.grad(objective, self.log_weight)[0]
        # A fitted ℓ is the objective's minimum: what gradient is left there is exp∘log's rounding,
        # which Adam, dividing by its own scale, would turn into a full step of lr.
        self.log_weight.grad = torch.where(fitting, torch.zeros_like(grad), grad)
        self.optimizer.step()
        weight = self.weight
        return {"lambda": weight, "ratio": weight * kd_norm / main_norm.clamp_min(_TINY)}

    def get_extra_state(self):
        return {"optimizer": self.optimizer.state_dict(), "r": self.r, "lr": self.lr}

    def set_extra_state(self, state) -> None:
        if state["r"] != self.r:
            raise ValueError(f"GNoRP state: saved with r={state['r']:g}, loading into r={self.r:g}")
        self.optimizer.load_state_dict(state["optimizer"])

    def extra_repr(self) -> str:
        return f"r={self.r:g}, lr={self.lr:g}, init={self.init}"


_OPTIONS = {"r": None, "lr": 1e-3, "init": None}


def parse_weight(spec):
    """A KD weight from its text: a number (a fixed β), or a weighting rule such as
    ``"gnorp:r=3.5"`` (options: ``r`` required, ``lr`` Adam's learning rate, ``init`` the initial λ),
    which gives a :class:`GNoRP`."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return float(spec)
    if not isinstance(spec, str):
        raise TypeError(f"kd_weight: expected a number or a rule such as 'gnorp:r=3.5', got {spec!r}")
    rule, _, args = spec.strip().partition(":")
    if rule.strip().lower() != "gnorp":
        try:
            return float(spec)
        except ValueError:
            raise ValueError(f"kd_weight: expected a number or 'gnorp:r=<ratio>', got {spec!r}") from None
    options = dict(_OPTIONS)
    for item in filter(None, (s.strip() for s in args.split(","))):
        key, _, value = (s.strip() for s in item.partition("="))
        if key not in options:
            raise ValueError(f"kd_weight {spec!r}: unknown option {key!r}; valid options: {', '.join(options)}")
        try:
            options[key] = float(value)
        except ValueError:
            raise ValueError(f"kd_weight {spec!r}: {key} expects a number, got {value!r}") from None
    if options["r"] is None:
        raise ValueError(f"kd_weight {spec!r}: GNoRP needs the gradient-norm ratio, e.g. 'gnorp:r=3.5'")
    return GNoRP(options.pop("r"), **options)
