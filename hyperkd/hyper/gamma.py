"""Parsing and encoding of the hypernetwork input γ ∈ [0, 1]^k (LayerKD-HN §3.2).

γ outside [0, 1] raises rather than being clamped: the sin/cos encoding is periodic, so a clamped
or wrapped γ would silently alias another operating point.
"""
import math
import numbers

import torch


def encode_gamma(gamma: torch.Tensor) -> torch.Tensor:
    """z_0 = [sin(πγ/2), cos(πγ/2)], the parameter-free input encoding of the MIP hypernetwork,
    for a B_γ×k γ: B_γ×2k (all sines, then all cosines)."""
    angle = gamma * (math.pi / 2)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def rng_state(device: torch.device) -> torch.Tensor:
    """The state of the generator that draws γ on ``device`` (torch's default one there)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def draw_gamma(k: int, device) -> torch.Tensor:
    """γ ~ U[0, 1]^k as a 1×k tensor, from the default generator of ``device``."""
    return torch.rand(1, k, device=device)


def as_gamma_batch(gamma, k: int, *, training: bool, device=None) -> torch.Tensor:
    """γ as a B_γ×k tensor (a Python float becomes fp64, so no precision is lost before the
    hypernetwork casts it to its own dtype).

    Accepts a float (k = 1), a (k,) tensor, or a (B_γ, k) tensor. ``None`` draws γ ~ U[0, 1]^k
    while training and uses 0.5 in eval.
    """
    if gamma is None:
        gamma = draw_gamma(k, device) if training else torch.full((1, k), 0.5, device=device)
    elif isinstance(gamma, numbers.Real) and not isinstance(gamma, bool):
        if k != 1:
            raise ValueError(f"gamma: a single number needs gamma_dim=1, but gamma_dim={k}; pass a "
                             f"tensor of shape ({k},) or (B_γ, {k})")
        gamma = torch.tensor([[float(gamma)]], dtype=torch.float64, device=device)
    elif isinstance(gamma, torch.Tensor):
        if not gamma.is_floating_point():
            raise TypeError(f"gamma: expected a floating tensor, got {gamma.dtype}")
        if gamma.dim() == 1:
            gamma = gamma.unsqueeze(0)
        if gamma.dim() != 2 or gamma.shape[1] != k or gamma.shape[0] == 0:
            raise ValueError(f"gamma: expected shape ({k},) or (B_γ, {k}), got {tuple(gamma.shape)}")
        gamma = gamma.to(device=device if device is not None else gamma.device)
    else:
        raise TypeError(f"gamma: expected None, a float or a tensor, got {type(gamma).__name__}")
    if not bool(((gamma >= 0) & (gamma <= 1)).all()):
        raise ValueError(f"gamma: expected values in [0, 1], got min {gamma.min().item():.4g}, "
                         f"max {gamma.max().item():.4g}")
    return gamma
