"""Triton kernel of the fused output-layer optimizer step: W's gradient dθᵀ·z is formed one
BLOCK_P×d tile at a time, in registers, and SGD(+momentum), Adam or AdamW is applied in place.
W and the state may be bf16, written back with stochastic rounding (E[round(x)] = x). Given the next
step's codes z_next, the same pass generates W_{t+1}·z_next from the tile as stored."""
import torch
import triton
import triton.language as tl

SGD, ADAM, ADAMW = 0, 1, 2  # the op's algorithm codes (hyperkd.ops.hyper_generate re-exports them)
BLOCK_P = 32


@triton.jit
def _store(ptr, offs, x, mask, seed, BF16: tl.constexpr):
    """Stores ``x`` and returns the value stored (in fp32)."""
    if BF16:
        # Add 16 random low bits, then truncate: rounds up with probability = discarded fraction.
        noise = tl.randint(seed, offs).to(tl.uint32, bitcast=True) & 0xFFFF
        bits = (x.to(tl.uint32, bitcast=True) + noise) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
        tl.store(ptr + offs, x.to(tl.bfloat16), mask=mask)
    else:
        tl.store(ptr + offs, x, mask=mask)
    return x


@triton.jit
def _fused_step_kernel(W, S1, S2, dtheta, z, z_next, next_out, B, B_next, P, D, lr, beta1, beta2, eps,
                       weight_decay, bc1, bc2_sqrt, seed, ALGO: tl.constexpr, MOMENTUM: tl.constexpr,
                       W_BF16: tl.constexpr,
                       S_BF16: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    # int64: P·d passes 2^31 for the large networks (VGG-19-bn: 2.6·10^9 elements).
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    k = tl.arange(0, BLOCK_D)
    mask = (p < P)[:, None] & (k < D)[None, :]
    offs = p[:, None] * D + k[None, :]
    g = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for s in range(B):
        c = tl.load(dtheta + s * P + p, mask=p < P, other=0.0)
        zs = tl.load(z + s * D + k, mask=k < D, other=0.0)
        g += c[:, None] * zs[None, :]
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    if ALGO == 0:
        g += weight_decay * w
        if MOMENTUM:
            g = beta1 * tl.load(S1 + offs, mask=mask, other=0.0).to(tl.float32) + g
            _store(S1, offs, g, mask, seed + 1, S_BF16)
        w -= lr * g
    else:
        if ALGO == 1:
            g += weight_decay * w
        else:
            w *= 1.0 - lr * weight_decay
        m = tl.load(S1 + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(S2 + offs, mask=mask, other=0.0).to(tl.float32)
        m += (1.0 - beta1) * (g - m)
        v = beta2 * v + (1.0 - beta2) * g * g
        _store(S1, offs, m, mask, seed + 1, S_BF16)
        _store(S2, offs, v, mask, seed + 2, S_BF16)
        w -= (lr / bc1) * m / (tl.sqrt(v) / bc2_sqrt + eps)
    w = tl.where(mask, _store(W, offs, w, mask, seed, W_BF16), 0.0)
    for s in range(B_next):
        zs = tl.load(z_next + s * D + k, mask=k < D, other=0.0)
        tl.store(next_out + s * P + p, tl.sum(w * zs[None, :], axis=1), mask=p < P)


def hyper_fused_step_(W, state1, state2, dtheta, z, algorithm, lr, beta1, beta2, eps, weight_decay, step,
                      seed, z_next=None, next_out=None):
    """In-place update of W (and its state) from the factors (dθ, z) of its gradient; returns
    W_{t+1}·z_next (B_next×P), or an empty tensor without ``z_next`` or when it is written into
    ``next_out`` (which may be dθ itself: each program loads its rows of dθ before it stores them)."""
    P, D = W.shape
    momentum = algorithm == SGD and beta1 != 0.0
    if next_out is not None:
        if z_next is None or next_out.shape != (z_next.shape[0], P) or next_out.dtype != torch.float32 \
                or not next_out.is_contiguous():
            raise ValueError(f"next_out: expected a contiguous float32 B_next×{P} matrix beside z_next, got "
                             f"{next_out.dtype} shape {tuple(next_out.shape)}")
        nxt = next_out
    else:
        nxt = z.new_empty(0) if z_next is None else torch.empty(z_next.shape[0], P, dtype=z.dtype, device=z.device)
    _fused_step_kernel[(triton.cdiv(P, BLOCK_P),)](
        W, state1 if state1.numel() else W, state2 if state2.numel() else W, dtheta, z,
        z if z_next is None else z_next, nxt, z.shape[0], 0 if z_next is None else z_next.shape[0], P, D,
        float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
        1.0 - float(beta1) ** step, (1.0 - float(beta2) ** step) ** 0.5, int(seed) & 0x7FFFFFFF,
        ALGO=algorithm, MOMENTUM=momentum, W_BF16=W.dtype == torch.bfloat16,
        S_BF16=state1.dtype == torch.bfloat16, BLOCK_P=BLOCK_P, BLOCK_D=triton.next_power_of_2(D))
    return z.new_empty(0) if next_out is not None else nxt
