"""Memory footprint of a hypernetised training step, before building it.

The output layer W (P×d) dominates (LayerKD-HN §3.2): W itself, its gradient (P×d unfused; when
fused only the B_γ×P factor dθ, which for one γ is also θ0's gradient, and the fused step's copy
of it, kept from backward to the optimizer step, whose update then writes the next step's carried
W·z into it) and the optimizer state (1 or 2 P×d tensors), the primary network's activations, the
small parameters (MLP, θ0, non-generated layers) and, with KD, the frozen teacher. Sizes are
strings such as ``"15GiB"`` (:func:`parse_size`, :func:`format_size`).
"""
import copy
import re

import torch
from torch import nn

from hyperkd.hyper.hypernetize import HyperNetized
from hyperkd.hyper.layout import LayoutPlan, find_modules

OPTIMIZERS = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}  # P×d state tensors


def _bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def _output_bytes(model: nn.Module, modules, batch_size: int, input_shape, train: bool) -> int:
    """fp32 bytes of the outputs of ``modules`` (of ``model``) for one batch.

    Runs a copy of the model on the meta device, so nothing is allocated or computed: planning
    VGG-19-bn or RepVGG-A2 is instant and needs no memory of theirs.
    """
    meta = copy.deepcopy(model).to("meta").train(train)
    found = dict(meta.named_modules())
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * _bytes(torch.float32)

    for name in modules:
        found[name].register_forward_hook(count)
    with torch.no_grad():
        meta(torch.empty(batch_size, *input_shape, device="meta"))
    return total


def activation_bytes(model: nn.Module, batch_size: int, input_shape=(3, 32, 32)) -> int:
    """Sum of every leaf module's output for one fp32 batch: what backward keeps, to first order."""
    leaves = [name for name, m in model.named_modules() if not list(m.children())]
    return _output_bytes(model, leaves, batch_size, input_shape, train=True)


def teacher_bytes(model: nn.Module, modules, batch_size: int, input_shape=(3, 32, 32)) -> int:
    """A frozen teacher of ``model``'s architecture: its fp32 parameters plus the outputs of the
    tapped ``modules`` for one batch, run in eval mode.

    The teacher runs without autograd, so its other activations are freed as it goes; the tapped
    features live until the KD loss is computed. Raw fp32 features are what CwD, FitNets and FSP
    keep; methods that keep a smaller summary (AT maps, AB bit masks, Grams) need less, so this is
    their upper bound.
    """
    params = sum(p.numel() for p in model.parameters()) * _bytes(torch.float32)
    return params + _output_bytes(model, modules, batch_size, input_shape, train=False)


def memory_estimate(model: nn.Module, hidden=(16, 64, 128), optimizer: str = "sgd",
                    dtype: torch.dtype = torch.float32, fused: bool = True, batch_size: int = 16, *,
                    state_dtype: torch.dtype = None, gammas: int = 1, input_shape=(3, 32, 32),
                    types=(nn.Conv2d,), teacher: bool = False) -> dict:
    """Bytes of one training step's tensors, by kind.

    ``model``: a plain primary network (all modules of ``types`` hypernetised) or a
    :class:`HyperNetized` one. ``optimizer``: one of ``sgd``, ``sgd_momentum``, ``adam``, ``adamw``.
    ``dtype``: W's storage (fp32 or bf16); ``state_dtype`` the optimizer state's (default: fp32).
    ``teacher``: whether KD runs a frozen teacher of the same architecture, tapped at every
    hypernetised module (see :func:`teacher_bytes`).
    Returns ``W``, ``W_grad``, ``optimizer_state``, ``activations``, ``teacher`` (0 without KD),
    ``other`` (hidden MLP, θ0, non-generated parameters, with gradients and state) and ``total``.
    Fused, ``W_grad`` is dθ (for one γ θ0's gradient is a view of it) and the fused step's copy of
    it, which also holds the next step's generation when the step is chained (see
    :class:`hyperkd.hyper.HyperOptimizer`), so chaining adds nothing.
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
    small += P + sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))  # θ0 is the output bias
    # Small parameters: value, gradient and up to two fp32 state tensors. Fused, for one γ θ0's
    # gradient is the factor dθ itself (a view of it, counted in W_grad).
    grads = small - (P if fused and gammas == 1 else 0)
    other = (small * (1 + OPTIMIZERS[optimizer]) + grads) * _bytes(torch.float32)
    W = P * d * _bytes(dtype)
    W_grad = 2 * gammas * P * _bytes(torch.float32) if fused else P * d * _bytes(torch.float32)
    state = OPTIMIZERS[optimizer] * P * d * _bytes(state_dtype)
    activations = activation_bytes(primary, batch_size, input_shape)
    tapped = list(dict.fromkeys(e.module_path for e in plan.entries))
    kd = teacher_bytes(primary, tapped, batch_size, input_shape) if teacher else 0
    out = {"W": W, "W_grad": W_grad, "optimizer_state": state, "activations": activations, "teacher": kd,
           "other": other}
    out["total"] = sum(out.values())
    return out


_UNITS = {"B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]+)\s*")


def parse_size(text: str) -> int:
    """Bytes in a size such as ``"15GiB"``, ``"512 MiB"`` or ``"16GB"``.

    Binary units (KiB, MiB, GiB, TiB = 2^10 … 2^40) and decimal ones (KB, MB, GB, TB = 10^3 …
    10^12) are both accepted, case-insensitively, because GPU memory is quoted either way (a
    "16 GB" card holds 14.9 GiB); a bare number is refused rather than guessed.
    """
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if match is None or match.group(2).upper() not in _UNITS:
        raise ValueError(f"expected a size such as 15GiB, 512MiB or 16GB (units: B, KiB, MiB, GiB, TiB, "
                         f"KB, MB, GB, TB), got {text!r}")
    size = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if size < 1:
        raise ValueError(f"expected a positive size, got {text!r}")
    return int(size)


def format_size(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps the figure ≥ 1, two decimals."""
    if n < 1024:
        return f"{n} B"
    exponent = min((int(n).bit_length() - 1) // 10, 4)
    return f"{n / 1024 ** exponent:.2f} {('KiB', 'MiB', 'GiB', 'TiB')[exponent - 1]}"
