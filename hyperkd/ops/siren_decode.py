"""Fused weight decoding (NeRN predictor MLP, paper §2) as ``torch.ops.hyperkd.siren_decode``.

CPU kernels are C++ (``csrc/cpu/siren_decode.cpp``), CUDA kernels Triton
(``kernels/siren_decode.py``); ``siren_decode_backward`` is the backward, itself an op. Both
backends recompute pre-activations in backward instead of saving N×H per layer: only the inputs
(coordinates and weights, a few MB) are kept between forward and backward.

On CUDA, predictors wider than ``FUSED_MAX_WIDTH`` run as the reference's chain of GEMMs instead
of the fully fused kernel, as tiny-cuda-nn's fully fused MLP hands widths above 128 to CUTLASS
GEMMs: the fused kernel keeps the whole width of a block in one register tile, which spills
beyond that, while GEMMs that wide run near cuBLAS's peak on their own.
"""
import torch

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import siren_decode as triton_decode
from hyperkd.reference.siren_decode import RELU, SINE
from hyperkd.reference.siren_decode import siren_decode as reference_decode

ACTIVATIONS = {"relu": RELU, "sin": SINE}
FUSED_MAX_WIDTH = 128


def _is_wide(out_weight) -> bool:
    return out_weight.shape[1] > FUSED_MAX_WIDTH


def decode_cuda(index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias,
                activation: int):
    args = (index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias, activation)
    return (reference_decode if _is_wide(out_weight) else triton_decode.siren_decode)(*args)


def decode_backward_cuda(grad, index, table_l, table_f, table_c, hidden_weight, hidden_bias,
                         out_weight, out_bias, activation: int):
    weights = (table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias)
    if not _is_wide(out_weight):
        return triton_decode.siren_decode_backward(grad, index, *weights, activation)
    # Recomputes the forward, as the fused kernel does; its activations live only for this call.
    leaves = [w.detach().requires_grad_() for w in weights]
    with torch.enable_grad():
        out = reference_decode(index, *leaves, activation)
    # With no hidden layer the hidden tensors are not used: their gradients are zeros, as the
    # kernels return them.
    return torch.autograd.grad(out, leaves, grad, materialize_grads=True)


torch.library.register_kernel("hyperkd::siren_decode", "cuda", decode_cuda)
torch.library.register_kernel("hyperkd::siren_decode_backward", "cuda", decode_backward_cuda)


@torch.library.register_fake("hyperkd::siren_decode")
def _siren_decode_fake(index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight,
                       out_bias, activation):
    return out_weight.new_empty(index.shape[0], out_weight.shape[0])


@torch.library.register_fake("hyperkd::siren_decode_backward")
def _siren_decode_backward_fake(grad, index, *weights_and_activation):
    return tuple(torch.empty_like(t) for t in weights_and_activation[:7])


def _setup_context(ctx, inputs, output):
    *tensors, activation = inputs
    ctx.activation = activation
    ctx.save_for_backward(*tensors)


def _backward(ctx, grad):
    index, *weights = ctx.saved_tensors
    grads = torch.ops.hyperkd.siren_decode_backward(grad, index, *weights, ctx.activation)
    return (None, *grads, None)


torch.library.register_autograd("hyperkd::siren_decode", _backward, setup_context=_setup_context)


def siren_decode(index, tables, hidden_weight, hidden_bias, out_weight, out_bias,
                 activation: str = "sin") -> torch.Tensor:
    """N×O kernels for the N coordinates ``index`` (int64 N×3 of (ℓ, f, c)).

    ``tables`` are the first layer split per index, (T_ℓ, T_f, T_c), each rows×H with the bias
    folded into T_ℓ; ``hidden_weight`` NH×H×H and ``hidden_bias`` NH×H the hidden layers;
    ``out_weight`` O×H and ``out_bias`` O the output layer. ``activation`` is "sin" (SIREN, with
    ω0 already folded into the weights) or "relu" (NeRN).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if not isinstance(index, torch.Tensor) or index.dtype != torch.long or index.dim() != 2 \
            or index.shape[1] != 3:
        raise ValueError("index: expected an int64 N×3 tensor of (layer, filter, channel)")
    if len(tables) != 3:
        raise ValueError(f"tables: expected three tables (T_ℓ, T_f, T_c), got {len(tables)}")
    width = out_weight.shape[1]
    for name, t in zip(("T_ℓ", "T_f", "T_c"), tables):
        if t.dim() != 2 or t.shape[1] != width:
            raise ValueError(f"tables: {name} must be rows×{width}, got {tuple(t.shape)}")
    if hidden_weight.dim() != 3 or hidden_weight.shape[1:] != (width, width):
        raise ValueError(f"hidden_weight: expected NH×{width}×{width}, got {tuple(hidden_weight.shape)}")
    return torch.ops.hyperkd.siren_decode(index, *tables, hidden_weight, hidden_bias, out_weight,
                                          out_bias, ACTIVATIONS[activation])
