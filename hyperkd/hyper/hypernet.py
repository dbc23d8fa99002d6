"""The MIP hypernetwork h(γ; W) of LayerKD-HN §3.2: encoding, hidden MLP (Eq. 1) and the fused
output layer θ = W·z + θ0 (Eq. 2–3), whose bias θ0 is the base weight vector."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from hyperkd.hyper.gamma import encode_gamma
from hyperkd.hyper.layout import LayoutPlan
from hyperkd.ops.hyper_generate import op_geometry

WEIGHT_DTYPES = (torch.float32, torch.bfloat16)


class HyperNet(nn.Module):
    """h(γ): B_γ×k γ → one B_γ×(*shape) tensor per entry of ``plan``.

    Parameters: the hidden layers ``hidden`` (Eq. 1) and the output layer: its weight ``W`` (P×d)
    and its bias ``theta0`` (P), the base weights, all trainable. As in HyperLight there is one
    base vector: the output layer's bias is θ0 (a separate bias beside it would receive the same
    gradient and move the base weights at twice the learning rate). The parameter count is
    Σ_k (w_{k−1} + 1)·w_k over the hidden widths (w_0 = 2·gamma_dim) plus P·(d + 1).
    ``W`` may be stored in bf16 (``weight_dtype``); it is then updated only by the fused step, with
    stochastic rounding. The fused step (``HyperOptimizer(fused=True)``) takes ``W`` off autograd.

    A state dict saved before θ0 became the output bias (with a ``b`` entry beside ``theta0``)
    loads: ``b`` is folded into θ0 (θ = W·z + b + θ0 = W·z + (b + θ0), the same weights).

    Every parameter is created on ``theta0``'s device: W's initialisation runs the MLP beside θ0,
    and a W built on the host and then moved would pass through a host copy of its own (6.4 GiB
    for RepVGG-A2 in bf16).
    """

    def __init__(self, plan: LayoutPlan, theta0: torch.Tensor, gamma_dim: int = 1,
                 hidden=(16, 64, 128), negative_slope: float = 0.01, delta_ratio: float = 0.1,
                 weight_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(gamma_dim, int) or gamma_dim < 1:
            raise ValueError(f"gamma_dim: expected a positive int, got {gamma_dim!r}")
        hidden = tuple(hidden)
        if not hidden or not all(isinstance(h, int) and h > 0 for h in hidden):
            raise ValueError(f"hidden: expected a non-empty sequence of positive widths, got {hidden!r}")
        if not delta_ratio >= 0:
            raise ValueError(f"delta_ratio: expected a number ≥ 0, got {delta_ratio!r}")
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype: expected one of {WEIGHT_DTYPES}, got {weight_dtype}")
        if theta0.shape != (plan.total,):
            raise ValueError(f"theta0: expected {plan.total} values, got shape {tuple(theta0.shape)}")
        self.plan, self.gamma_dim, self.negative_slope = plan, gamma_dim, negative_slope
        widths = (2 * gamma_dim,) + hidden
        device = theta0.device
        self.hidden = nn.ModuleList(nn.Linear(a, b, device=device) for a, b in zip(widths[:-1], widths[1:]))
        self.W = nn.Parameter(torch.empty(plan.total, hidden[-1], dtype=weight_dtype, device=device),
                              requires_grad=weight_dtype == torch.float32)
        self.theta0 = nn.Parameter(theta0.detach().clone().float())
        self._geometry = op_geometry([e.shape for e in plan], [e.memory_format == "channels_last" for e in plan])
        self._fused_step = None  # see attach_fused_step
        self.reset_output_layer(delta_ratio)

    @torch.no_grad()
    def reset_output_layer(self, delta_ratio: float) -> None:
        """W rows of layer m ~ N(0, σ_m²) with σ_m = ratio·rms(θ0_m)/‖z(γ=0.5)‖, so the generated
        Δθ_m = W_m·z starts at ≈ ``delta_ratio`` of θ0_m in RMS, layer by layer."""
        z_norm = self.code(torch.full((1, self.gamma_dim), 0.5)).norm().clamp_min(1e-12)
        for e, part in zip(self.plan, self.theta0.split(self.plan.numels)):
            sigma = delta_ratio * part.pow(2).mean().sqrt() / z_norm
            rows = self.W[e.offset:e.offset + e.numel]
            rows.normal_(0.0, float(sigma))  # in place: no P×d temporary

    def attach_fused_step(self, step) -> None:
        """Hands W's update to ``step`` (a :class:`hyperkd.hyper.optim.FusedOutputStep`, attached by
        ``HyperOptimizer(fused=True)``): generation with gradients then runs through it, and W is
        updated from the factors (dθ, z) instead of receiving a P×d gradient. ``None`` detaches it."""
        self._fused_step = step

    @property
    def fused_step(self):
        """The attached fused step, or None (see :meth:`attach_fused_step`)."""
        return self._fused_step

    def code(self, gamma: torch.Tensor) -> torch.Tensor:
        """z_{H−1} of Eq. 1 for a B_γ×k γ (input encoded as [sin(πγ/2), cos(πγ/2)]).

        Always fp32, even under autocast: the generation op takes W's accumulation dtype, and W
        would spread an fp16 rounding of z into every generated weight (the MLP is tiny anyway).
        """
        with torch.autocast(self.theta0.device.type, enabled=False):
            z = encode_gamma(gamma.to(self.theta0))
            for layer in self.hidden:
                z = F.leaky_relu(layer(z), self.negative_slope)
        return z

    def forward(self, gamma: torch.Tensor, key=None) -> list:
        """Eq. 2–3 for every γ row: the generated tensors, each B_γ×(*shape) in its final layout.

        ``key`` names how γ was chosen (see :meth:`HyperNetized.next_gamma`): the fused step uses
        the generation it carried over from its last update when that was made for this key.
        """
        z = self.code(gamma)
        if self._fused_step is not None and torch.is_grad_enabled():
            return self._fused_step.generate(self, z, key)
        return list(torch.ops.hyperkd.hyper_generate(self.W, z, self.theta0, *self._geometry))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Older checkpoints: a separate output bias b beside θ0; the generated weights depend on
        # their sum only, so it becomes θ0. A new tensor: the caller's θ0 is left as it was.
        old_bias = state_dict.pop(prefix + "b", None)
        if old_bias is not None and prefix + "theta0" in state_dict:
            state_dict[prefix + "theta0"] = state_dict[prefix + "theta0"] + old_bias.to(state_dict[prefix + "theta0"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"P={self.plan.total}, d={self.W.shape[1]}, gamma_dim={self.gamma_dim}, "
                f"W dtype={self.W.dtype}")


def theta0_kaiming(plan: LayoutPlan) -> torch.Tensor:
    """θ0 drawn like a fresh network: Kaiming-normal (fan-in, ReLU gain) weights, zero biases."""
    parts = []
    for e in plan:
        if e.param == "bias" or len(e.shape) < 2:
            parts.append(torch.zeros(e.numel))
        else:
            fan_in = math.prod(e.shape[1:])
            parts.append(torch.randn(e.numel) * math.sqrt(2.0 / fan_in))
    return torch.cat(parts)
