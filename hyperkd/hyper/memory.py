"""Memory footprint of a hypernetised training step, before building it.

The output layer W (P×d) dominates (LayerKD-HN §3.2): W itself, its gradient (P×d unfused; only
the B_γ×P factor dθ when fused) and the optimizer state (1 or 2 P×d tensors), next to the
primary network's activations and the small parameters (MLP, b, θ0, non-generated layers).
"""
import copy

import torch
from torch import nn

from hyperkd.hyper.hypernetize import HyperNetized
from hyperkd.hyper.layout import LayoutPlan, find_modules

OPTIMIZERS = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}  # P×d state tensors


def _bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def activation_bytes(model: nn.Module, batch_size: int, input_shape=(3, 32, 32)) -> int:
    """Sum of every leaf module's output for one fp32 batch: what backward keeps, to first order.

    Runs the model on the meta device, so nothing is allocated or computed.
    """
    meta = copy.deepcopy(model).to("meta").train()
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * _bytes(torch.float32)

    for m in meta.modules():
        if not list(m.children()):
            m.register_forward_hook(count)
    with torch.no_grad():
        meta(torch.empty(batch_size, *input_shape, device="meta"))
    return total


def memory_estimate(model: nn.Module, hidden=(16, 64, 128), optimizer: str = "sgd",
                    dtype: torch.dtype = torch.float32, fused: bool = True, batch_size: int = 16, *,
                    state_dtype: torch.dtype = None, gammas: int = 1, input_shape=(3, 32, 32),
                    types=(nn.Conv2d,)) -> dict:
    """Bytes of one training step's tensors, by kind.

    ``model``: a plain primary network (all modules of ``types`` hypernetised) or a
    :class:`HyperNetized` one. ``optimizer``: one of ``sgd``, ``sgd_momentum``, ``adam``, ``adamw``.
    ``dtype``: W's storage (fp32 or bf16); ``state_dtype`` the optimizer state's (default: fp32).
    Returns ``W``, ``W_grad``, ``optimizer_state``, ``activations``, ``other`` (hidden MLP, b, θ0,
    non-generated parameters, with gradients and state) and ``total``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype: expected torch.float32 or torch.bfloat16, got {dtype}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if dtype == torch.bfloat16 and not fused:
        raise ValueError("dtype: a bf16 W needs fused=True")
    state_dtype = state_dtype or torch.float32
    if isinstance(model, HyperNetized):
        primary, plan, d = model.primary, model.plan, model.hypernet.W.shape[1]
    else:
        paths = find_modules(model, types)
        if not paths:
            raise ValueError(f"model: no module of type {[t.__name__ for t in types]} to hypernetise")
        primary, plan, d = model, LayoutPlan.from_modules(model, paths), tuple(hidden)[-1]
    P = plan.total
    generated = set(plan.names)
    small = sum(p.numel() for n, p in primary.named_parameters() if n not in generated)
    widths = (2,) + tuple(hidden)
    small += 2 * P + sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    # Small parameters: value, gradient and up to two fp32 state tensors.
    other = small * _bytes(torch.float32) * (2 + OPTIMIZERS[optimizer])
    W = P * d * _bytes(dtype)
    W_grad = gammas * P * _bytes(torch.float32) if fused else P * d * _bytes(torch.float32)
    state = OPTIMIZERS[optimizer] * P * d * _bytes(state_dtype)
    activations = activation_bytes(primary, batch_size, input_shape)
    out = {"W": W, "W_grad": W_grad, "optimizer_state": state, "activations": activations, "other": other}
    out["total"] = sum(out.values())
    return out
