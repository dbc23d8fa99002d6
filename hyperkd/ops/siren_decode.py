"""Fused weight decoding (NeRN predictor MLP, paper §2) as ``torch.ops.hyperkd.siren_decode``.

CPU kernels are C++ (``csrc/cpu/siren_decode.cpp``), CUDA kernels Triton
(``kernels/siren_decode.py``); ``siren_decode_backward`` is the backward, itself an op.

Backward needs every layer's pre-activation (sin' = cos needs z, not sin z). The op stores them,
(NH+1)×N×H, when asked (``save_pre_activations``), and its backward reads them; otherwise the
backward recomputes them from the inputs. :func:`siren_decode` asks when gradients are needed and
the buffer fits ``SAVE_LIMIT_BYTES``: a training batch of kernels (4096 × width 64 × 4 layers is
4 MiB) is stored, which saves the backward a third of its GEMMs; a full decode of a wide predictor
over a large net (hundreds of MB per layer) is recomputed.

On CUDA, predictors wider than ``FUSED_MAX_WIDTH`` run as a chain of GEMMs (:func:`gemm_chain`,
with its backward written out layer by layer in :func:`gemm_chain_backward`) instead of the fully
fused kernel, as tiny-cuda-nn's fully fused MLP hands widths above 128 to CUTLASS GEMMs: the fused
kernel keeps the whole width of a block in one register tile, which spills beyond that, while
GEMMs that wide run near cuBLAS's peak on their own. The chain computes in
``pre_activation_dtype`` (fp32 for half-precision weights) and stores or recomputes the
pre-activations as the fused kernels do.
"""
import torch

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import siren_decode as triton_decode
RELU, SINE = 0, 1
ACTIVATIONS = {"relu": RELU, "sin": SINE}
FUSED_MAX_WIDTH = 128
SAVE_LIMIT_BYTES = 256 * 2 ** 20


def _is_wide(out_weight) -> bool:
    return out_weight.shape[1] > FUSED_MAX_WIDTH


def _pre_activations_like(out_weight, NH: int, N: int, save: bool):
    shape = (NH + 1, N, out_weight.shape[1]) if save else (0,)
    return out_weight.new_empty(shape, dtype=triton_decode.pre_activation_dtype(out_weight.dtype))


def _activate(z, activation: int):
    return torch.sin(z) if activation == SINE else torch.relu(z)


def _activation_slope(z, activation: int):
    """act'(z): cos z for the sine, the step z > 0 for ReLU."""
    return torch.cos(z) if activation == SINE else (z > 0).to(z.dtype)


def chain_pre_activations(index, table_l, table_f, table_c, hidden_weight, hidden_bias,
                          activation: int, dtype: torch.dtype, saved=None):
    """z_NH (N×H) in ``dtype`` from z₀ = T_ℓ[ℓ] + T_f[f] + T_c[c] and z_{i+1} = act(z_i) W_iᵀ + b_i;
    each z_i is also copied into ``saved[i]`` when ``saved`` is given and not empty. Plain
    differentiable torch ops otherwise."""
    z = sum(t.to(dtype).index_select(0, index[:, axis])
            for axis, t in enumerate((table_l, table_f, table_c)))
    store = saved is not None and saved.numel() > 0
    if store:
        saved[0].copy_(z)
    for layer, (weight, bias) in enumerate(zip(hidden_weight, hidden_bias)):
        z = torch.addmm(bias.to(dtype), _activate(z, activation), weight.to(dtype).T)
        if store:
            saved[layer + 1].copy_(z)
    return z


def gemm_chain(index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias,
               activation: int, save_pre_activations: bool = False):
    """(N×O kernels, pre-activations) as the fused kernels return them, from one GEMM per layer."""
    saved = _pre_activations_like(out_weight, hidden_weight.shape[0], len(index), save_pre_activations)
    z = chain_pre_activations(index, table_l, table_f, table_c, hidden_weight, hidden_bias,
                              activation, saved.dtype, saved)
    out = torch.addmm(out_bias.to(z.dtype), _activate(z, activation), out_weight.to(z.dtype).T)
    return out.to(out_weight.dtype), saved


def gemm_chain_backward(grad, index, table_l, table_f, table_c, hidden_weight, hidden_bias,
                        out_weight, out_bias, activation: int, pre_activations):
    """Gradients of the seven weight tensors by the chain rule, layer by layer from the output:
    dW = dzᵀ·act(z_in), db = Σ_rows dz, dz_in = (dz·W) ⊙ act'(z_in); the tables gather-add dz₀ at
    their rows. ``pre_activations`` are the forward's, or empty to recompute them here."""
    zs = pre_activations
    if zs.numel() == 0:
        zs = _pre_activations_like(out_weight, hidden_weight.shape[0], len(index), True)
        chain_pre_activations(index, table_l, table_f, table_c, hidden_weight, hidden_bias,
                              activation, zs.dtype, zs)
    dz = grad.to(zs.dtype)
    weights, grads = [out_weight, *reversed(hidden_weight)], []
    for layer, weight in zip(range(len(zs) - 1, -1, -1), weights):
        grads.append((dz.T @ _activate(zs[layer], activation), dz.sum(0)))
        dz = (dz @ weight.to(zs.dtype)) * _activation_slope(zs[layer], activation)
    (d_out_weight, d_out_bias), hidden = grads[0], grads[:0:-1]
    d_hidden_weight = torch.stack([g[0] for g in hidden]) if hidden else torch.zeros_like(hidden_weight)
    d_hidden_bias = torch.stack([g[1] for g in hidden]) if hidden else torch.zeros_like(hidden_bias)
    d_tables = [zs.new_zeros(t.shape).index_add_(0, index[:, axis], dz)
                for axis, t in enumerate((table_l, table_f, table_c))]
    inputs = (table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias)
    grads = (*d_tables, d_hidden_weight, d_hidden_bias, d_out_weight, d_out_bias)
    return tuple(g.to(t.dtype) for g, t in zip(grads, inputs))


def decode_cuda(index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias,
                activation: int, save_pre_activations: bool = False):
    args = (index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias, activation)
    launch = gemm_chain if _is_wide(out_weight) else triton_decode.siren_decode
    return launch(*args, save_pre_activations)


def decode_backward_cuda(grad, index, table_l, table_f, table_c, hidden_weight, hidden_bias,
                         out_weight, out_bias, activation: int, pre_activations):
    launch = gemm_chain_backward if _is_wide(out_weight) else triton_decode.siren_decode_backward
    return launch(grad, index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight,
                  out_bias, activation, pre_activations)


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
    """Gradients will be taken and the stored pre-activations fit the limit."""
    hidden_weight, out_weight = weights[3], weights[5]
    if not (torch.is_grad_enabled() and any(w.requires_grad for w in weights)):
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
