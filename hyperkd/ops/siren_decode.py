"""Fused weight decoding (NeRN predictor MLP, paper §2) as ``torch.ops.hyperkd.siren_decode``.

CPU kernels are C++ (``csrc/cpu/siren_decode.cpp``), CUDA kernels Triton
(``kernels/siren_decode.py``); ``siren_decode_backward`` is the backward, itself an op.

Backward needs every layer's pre-activation (sin' = cos needs z, not sin z). The op stores them,
(NH+1)×N×H, when asked (``save_pre_activations``), and its backward reads them; otherwise the
backward recomputes them from the inputs. :func:`siren_decode` asks when gradients are needed and
the buffer fits ``SAVE_LIMIT_BYTES``: a training batch of kernels (4096 × width 64 × 4 layers is
4 MiB) is stored, which saves the backward a third of its GEMMs; a full decode of a wide predictor
over a large net (hundreds of MB per layer) is recomputed.

On CUDA, predictors wider than ``FUSED_MAX_WIDTH`` run as the reference's chain of GEMMs instead
of the fully fused kernel, as tiny-cuda-nn's fully fused MLP hands widths above 128 to CUTLASS
GEMMs: the fused kernel keeps the whole width of a block in one register tile, which spills
beyond that, while GEMMs that wide run near cuBLAS's peak on their own. That path recomputes in
backward through autograd, so it is never asked to store.
"""
import torch

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import siren_decode as triton_decode
from hyperkd.reference.siren_decode import RELU, SINE, activate, pre_activations
from hyperkd.reference.siren_decode import siren_decode as reference_decode

ACTIVATIONS = {"relu": RELU, "sin": SINE}
FUSED_MAX_WIDTH = 128
SAVE_LIMIT_BYTES = 256 * 2 ** 20


def _is_wide(out_weight) -> bool:
    return out_weight.shape[1] > FUSED_MAX_WIDTH


def _pre_activations_like(out_weight, NH: int, N: int, save: bool):
    shape = (NH + 1, N, out_weight.shape[1]) if save else (0,)
    return out_weight.new_empty(shape, dtype=triton_decode.pre_activation_dtype(out_weight.dtype))


def decode_cuda(index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias,
                activation: int, save_pre_activations: bool = False):
    args = (index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias, activation)
    if not _is_wide(out_weight):
        return triton_decode.siren_decode(*args, save_pre_activations)
    zs = pre_activations(index, table_l, table_f, table_c, hidden_weight, hidden_bias, activation)
    out = activate(zs[-1], activation) @ out_weight.T + out_bias
    saved = _pre_activations_like(out_weight, len(zs) - 1, len(index), save_pre_activations)
    if save_pre_activations:
        torch.stack(zs, out=saved)
    return out, saved


def decode_backward_cuda(grad, index, table_l, table_f, table_c, hidden_weight, hidden_bias,
                         out_weight, out_bias, activation: int, pre_activations):
    weights = (table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias)
    if not _is_wide(out_weight):
        return triton_decode.siren_decode_backward(grad, index, *weights, activation, pre_activations)
    # Recomputes the forward; its activations live only for this call.
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
                       out_bias, activation, save_pre_activations=False):
    out = out_weight.new_empty(index.shape[0], out_weight.shape[0])
    return out, _pre_activations_like(out_weight, hidden_weight.shape[0], index.shape[0],
                                      save_pre_activations)


@torch.library.register_fake("hyperkd::siren_decode_backward")
def _siren_decode_backward_fake(grad, index, *weights_activation_and_saved):
    return tuple(torch.empty_like(t) for t in weights_activation_and_saved[:7])


def _setup_context(ctx, inputs, output):
    *tensors, activation, _ = inputs
    ctx.activation = activation
    ctx.mark_non_differentiable(output[1])
    # Otherwise autograd hands backward a zero-filled gradient of the stored pre-activations'
    # size (8 MiB at width 128 on a 4096-kernel batch: a fifth of the step's time).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*tensors, output[1])


def _backward(ctx, grad, _grad_pre_activations):
    index, *weights, saved = ctx.saved_tensors
    if grad is None:  # no gradient reached the kernels (gradcheck tests this case)
        return (None,) * (len(weights) + 3)
    grads = torch.ops.hyperkd.siren_decode_backward(grad, index, *weights, ctx.activation, saved)
    return (None, *grads, None, None)


torch.library.register_autograd("hyperkd::siren_decode", _backward, setup_context=_setup_context)


def _worth_saving(index, weights) -> bool:
    """Gradients will be taken, the backend reads stored pre-activations, and they fit the limit."""
    hidden_weight, out_weight = weights[3], weights[5]
    if not (torch.is_grad_enabled() and any(w.requires_grad for w in weights)):
        return False
    if out_weight.device.type == "cuda" and _is_wide(out_weight):
        return False
    dtype = triton_decode.pre_activation_dtype(out_weight.dtype)
    size = (hidden_weight.shape[0] + 1) * index.shape[0] * out_weight.shape[1]
    return size * dtype.itemsize <= SAVE_LIMIT_BYTES


def siren_decode(index, tables, hidden_weight, hidden_bias, out_weight, out_bias,
                 activation: str = "sin", save_pre_activations=None) -> torch.Tensor:
    """N×O kernels for the N coordinates ``index`` (int64 N×3 of (ℓ, f, c)).

    ``tables`` are the first layer split per index, (T_ℓ, T_f, T_c), each rows×H with the bias
    folded into T_ℓ; ``hidden_weight`` NH×H×H and ``hidden_bias`` NH×H the hidden layers;
    ``out_weight`` O×H and ``out_bias`` O the output layer. ``activation`` is "sin" (SIREN, with
    ω0 already folded into the weights) or "relu" (NeRN). ``save_pre_activations`` (default:
    when gradients are needed and the (NH+1)×N×H buffer fits ``SAVE_LIMIT_BYTES``) trades that
    buffer for the backward's recomputation of the forward.
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
    weights = (*tables, hidden_weight, hidden_bias, out_weight, out_bias)
    if save_pre_activations is None:
        save_pre_activations = _worth_saving(index, weights)
    return torch.ops.hyperkd.siren_decode(index, *weights, ACTIVATIONS[activation],
                                          bool(save_pre_activations))[0]
