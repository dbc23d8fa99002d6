"""Fused MIP weight generation (LayerKD-HN §3.2, Eq. 2–3) as ``torch.ops.hyperkd`` ops.

``hyper_generate`` computes θ = W·z + θ0 for B_γ codes z (one read of W; θ0, the base weights, is
the output layer's bias) and writes each
generated tensor straight into its final layout; ``hyper_generate_backward`` returns dz and the
packed dθ (B_γ×P) from one pass over W. W's gradient is the rank-B_γ product dθᵀ·z, formed only
when W requires a gradient (the fused optimizer step in ``hyperkd.hyper`` never forms it); θ0's
is Σ_γ dθ (:func:`gamma_sum`), a view of dθ for one γ. CPU kernels are C++
(``csrc/cpu/hyper_generate.cpp``), CUDA kernels Triton (``kernels/hyper_generate.py``).
"""
import math

import torch

from hyperkd import _C  # noqa: F401  (registers the schemas and CPU kernels)
from hyperkd.kernels import hyper_fused_step as triton_fs
from hyperkd.kernels import hyper_generate as triton_hg
from hyperkd.kernels.hyper_fused_step import ADAM, ADAMW, SGD  # noqa: F401  (hyper_fused_step_'s codes)

torch.library.register_kernel("hyperkd::hyper_generate", "cuda", triton_hg.hyper_generate)
torch.library.register_kernel("hyperkd::hyper_generate_backward", "cuda",
                              triton_hg.hyper_generate_backward)

W_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@torch.library.register_fake("hyperkd::hyper_generate")
def _hyper_generate_fake(W, z, theta0, ndims, sizes, channels_last):
    return triton_hg.empty_outputs(z, ndims, sizes, channels_last)


@torch.library.register_fake("hyperkd::hyper_generate_backward")
def _hyper_generate_backward_fake(grads, W, z, ndims, sizes, channels_last):
    return z.new_empty(z.shape), z.new_empty(z.shape[0], W.shape[0])


def gamma_sum(dtheta):
    """Σ_γ dθ, the gradient of θ0. For one γ it is dθ's only row, returned as a view: the
    backward then holds one P-vector where a separate sum would hold two (the op returns no sum
    for that reason)."""
    return dtheta[0] if dtheta.shape[0] == 1 else dtheta.sum(0)


def _setup_context(ctx, inputs, output):
    W, z, theta0, ndims, sizes, channels_last = inputs
    ctx.geometry = (ndims, sizes, channels_last)
    ctx.save_for_backward(W, z)


def generation_backward(grads, W, z, geometry):
    """(dz, dθ) of generation from the upstream gradients of its outputs (``None`` for an unused
    output): the one backward of Eq. 2–3, run by the op's autograd and by the fused step's."""
    grads = [torch.zeros_like(o) if g is None else g for g, o in zip(grads, triton_hg.empty_outputs(z, *geometry))]
    return torch.ops.hyperkd.hyper_generate_backward(grads, W, z, *geometry)


def _backward(ctx, grads):
    W, z = ctx.saved_tensors
    dz, dtheta = generation_backward(grads, W, z, ctx.geometry)
    dW = (dtheta.t() @ z).to(W.dtype) if ctx.needs_input_grad[0] else None
    return dW, dz, gamma_sum(dtheta), None, None, None


torch.library.register_autograd("hyperkd::hyper_generate", _backward, setup_context=_setup_context)


def op_geometry(shapes, channels_last):
    """(ndims, sizes padded to 4 per tensor, 0/1 channels_last flags) as the op takes them."""
    ndims, sizes = [], []
    for s in shapes:
        ndims.append(len(s))
        sizes.extend([1] * (4 - len(s)) + list(s))
    return ndims, sizes, [int(bool(c)) for c in channels_last]


def _check_shapes(shapes, channels_last, P):
    if not isinstance(shapes, (list, tuple)) or len(shapes) == 0:
        raise ValueError("shapes: expected a non-empty list of tensor shapes")
    for m, s in enumerate(shapes):
        if not isinstance(s, (list, tuple)) or not 1 <= len(s) <= 4 or not all(
                isinstance(n, int) and n > 0 for n in s):
            raise ValueError(f"shapes[{m}]: expected 1 to 4 positive sizes, got {s!r}")
    if len(channels_last) != len(shapes):
        raise ValueError(f"channels_last: expected {len(shapes)} flags, one per shape, got "
                         f"{len(channels_last)}")
    for m, (s, cl) in enumerate(zip(shapes, channels_last)):
        if cl and len(s) != 4:
            raise ValueError(f"channels_last[{m}]: channels_last needs a 4-D shape, got {tuple(s)}")
    total = sum(math.prod(s) for s in shapes)
    if total != P:
        raise ValueError(f"shapes: the tensors hold {total} values but W has {P} rows")


def hyper_generate(W, z, theta0, shapes, channels_last=None):
    """Eq. 2–3 fused: one B_γ×(*shape) tensor per entry of ``shapes``, θ = W·z + θ0.

    W is P×d (fp32, or bf16/fp16 storage; fp64 on the CPU), z B_γ×d and θ0 a P-vector in fp32
    (fp64 for fp64 W). ``channels_last[m]`` writes 4-D tensor m in channels_last layout.
    """
    for name, t in (("W", W), ("z", z), ("theta0", theta0)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if W.dim() != 2 or W.dtype not in W_DTYPES:
        raise ValueError(f"W: expected a P×d matrix of dtype {W_DTYPES}, got {W.dtype} shape {tuple(W.shape)}")
    acc = torch.float64 if W.dtype == torch.float64 else torch.float32
    if z.dim() != 2 or z.shape[1] != W.shape[1] or z.dtype != acc:
        raise ValueError(f"z: expected a B_γ×{W.shape[1]} matrix of dtype {acc}, got {z.dtype} "
                         f"shape {tuple(z.shape)}")
    if theta0.shape != (W.shape[0],) or theta0.dtype != acc:
        raise ValueError(f"theta0: expected a {acc} vector of {W.shape[0]} values, got {theta0.dtype} "
                         f"shape {tuple(theta0.shape)}")
    for name, t in (("z", z), ("theta0", theta0)):
        if t.device != W.device:
            raise ValueError(f"{name}: device {t.device} differs from W's {W.device}")
    channels_last = [False] * len(shapes) if channels_last is None else list(channels_last)
    _check_shapes(shapes, channels_last, W.shape[0])
    out = torch.ops.hyperkd.hyper_generate(W.contiguous(), z.contiguous(), theta0.contiguous(),
                                           *op_geometry(shapes, channels_last))
    return list(out)


# The fused optimizer step of W (no autograd: it is an update, not a function of its inputs).
torch.library.register_kernel("hyperkd::hyper_fused_step_", "cuda", triton_fs.hyper_fused_step_)


@torch.library.register_fake("hyperkd::hyper_fused_step_")
def _hyper_fused_step_fake(W, state1, state2, dtheta, z, algorithm, lr, beta1, beta2, eps, weight_decay,
                           step, seed):
    return None
