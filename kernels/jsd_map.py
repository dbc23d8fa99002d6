"""Triton kernels of the fused JSD map loss (layer-wise learning rates, §3.4 Eq. 8–10).

One launch serves every layer of a call: program ``pid`` handles row (layer m, sample b), reached
through the layer table of :mod:`._layers`; the attention-transfer kernels' channel-map block
S = Σ_c |f_c|^p (their kind 1) makes each map. The loss launch writes each row's distribution, its JSD with the teacher's and then dJ/dS into one fp32 B×ΣN buffer; the
attention-transfer gradient launch turns dJ/dS into each feature's gradient, in the op's forward.
"""
import torch
import triton
import triton.language as tl

from hyperkd.kernels._layers import (channel_spatial_blocks, empty_like_each, layer_table, pointer_table,
                                     row_start)
from hyperkd.kernels.attention_transfer import TILE, _at_feature_grad_kernel, _spatial_block, map_offsets, pow_mode

_KIND_POWER_SUM = 1  # the AT kernels' kind 1: S = Σ_c |f_c|^p


@triton.jit
def _distribution_row(f_base, p_row, C, W, sc, sh, sw, N, P, EPS, MODE: tl.constexpr,
                      SOFTMAX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Writes P = S/max(ΣS, eps) (or softmax S) of one sample to p_row; returns ΣS (or Σexp)."""
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    top = tl.full([BLOCK_N], float("-inf"), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = n < N
        s = _spatial_block(f_base, C, W, sc, sh, sw, n, mask, P, _KIND_POWER_SUM, MODE, BLOCK_C, BLOCK_N)
        tl.store(p_row + n, s, mask=mask)
        if SOFTMAX:
            top = tl.maximum(top, tl.where(mask, s, float("-inf")))
        else:
            total += tl.where(mask, s, 0.0)
    if SOFTMAX:
        mx = tl.max(top, axis=0)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            mask = n < N
            e = tl.exp(tl.load(p_row + n, mask=mask, other=float("-inf")) - mx)
            total += tl.where(mask, e, 0.0)
            tl.store(p_row + n, e, mask=mask)
    z = tl.sum(total, axis=0)
    inv = 1.0 / tl.maximum(z, EPS)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = n < N
        tl.store(p_row + n, tl.load(p_row + n, mask=mask) * inv, mask=mask)
    return z


@triton.jit
def _jsd_terms(p, q, EPS):
    """(2·JSD summand, dJ/dP) of one block: P log(P+ε) + Q log(Q+ε) − 2M log(M+ε) and
    ½(log(P+ε) + P/(P+ε) − log(M+ε) − M/(M+ε))."""
    m = (p + q) * 0.5
    lp = tl.log(p + EPS)
    lm = tl.log(m + EPS)
    value = p * lp + q * tl.log(q + EPS) - 2.0 * m * lm
    return value, 0.5 * (lp + p / (p + EPS) - lm - m / (m + EPS))


@triton.jit
def _jsd_summary_kernel(table, ptr_carrier, out, B, P, EPS, MODE: tl.constexpr, SOFTMAX: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    m, b, C, H, W, sc, sh, sw, off, f_base = row_start(table, ptr_carrier, B)
    p_row = tl.load(out + m).to(tl.pointer_type(tl.float32)) + b * H * W
    _distribution_row(f_base, p_row, C, W, sc, sh, sw, H * W, P, EPS, MODE, SOFTMAX, BLOCK_C, BLOCK_N)


@triton.jit
def _jsd_loss_kernel(table, ptr_carrier, teacher, lambdas, map_grad, rows, B, P, EPS,
                     MODE: tl.constexpr, SOFTMAX: tl.constexpr, MEAN: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    m, b, C, H, W, sc, sh, sw, off, f_base = row_start(table, ptr_carrier, B)
    N = H * W
    p_row = map_grad + off + b * N
    z = _distribution_row(f_base, p_row, C, W, sc, sh, sw, N, P, EPS, MODE, SOFTMAX, BLOCK_C, BLOCK_N)
    q_row = tl.load(teacher + m).to(tl.pointer_type(tl.float32)) + b * N
    value = tl.zeros([BLOCK_N], dtype=tl.float32)
    dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = n < N
        p = tl.load(p_row + n, mask=mask, other=0.0)
        v, g = _jsd_terms(p, tl.load(q_row + n, mask=mask, other=0.0), EPS)
        value += tl.where(mask, v, 0.0)
        dot += tl.where(mask, g * p, 0.0)
    tl.store(rows + m * B + b, 0.5 * tl.sum(value, axis=0))
    g_dot = tl.sum(dot, axis=0)
    scale = tl.load(lambdas + m)
    if MEAN:
        scale = scale / B.to(tl.float32)
    # Back through P: softmax P(g − ⟨g,P⟩); S/Z (g − ⟨g,P⟩)/Z, or g/eps where Z was clamped.
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask = n < N
        p = tl.load(p_row + n, mask=mask, other=0.0)
        _, g = _jsd_terms(p, tl.load(q_row + n, mask=mask, other=0.0), EPS)
        if SOFTMAX:
            d = p * (g - g_dot)
        else:
            d = tl.where(z > EPS, (g - g_dot) / z, g / EPS)
        tl.store(p_row + n, scale * d, mask=mask)


def _launch_blocks(feats):
    block_c, block_n = channel_spatial_blocks(feats, TILE)
    return dict(BLOCK_C=block_c, BLOCK_N=block_n)


def jsd_map_summary(feats, p: float, softmax: bool, eps: float):
    """The distributions P, one fp32 B×N tensor per layer, from one launch."""
    B = feats[0].shape[0]
    out = [torch.empty(B, f.shape[2] * f.shape[3], dtype=torch.float32, device=f.device) for f in feats]
    _jsd_summary_kernel[(len(feats) * B,)](
        layer_table(feats), feats[0], pointer_table(out), B, float(p), float(eps),
        MODE=pow_mode(p), SOFTMAX=softmax, **_launch_blocks(feats))
    return out


def jsd_map_loss(student, teacher, lambdas, p: float, softmax: bool, eps: float, mean: bool, with_grad: bool):
    """(loss, layer_losses, grads) as the CPU op returns them; teacher entries are distributions."""
    B, M = student[0].shape[0], len(student)
    offs, total = map_offsets(student)
    map_grad = torch.empty(total, dtype=torch.float32, device=student[0].device)
    rows = torch.empty(M, B, dtype=torch.float32, device=student[0].device)
    blocks = _launch_blocks(student)
    _jsd_loss_kernel[(M * B,)](
        layer_table(student, offs), student[0], pointer_table(teacher), lambdas, map_grad, rows, B,
        float(p), float(eps), MODE=pow_mode(p), SOFTMAX=softmax, MEAN=mean, **blocks)
    layer_losses = rows.sum(dim=1) / B if mean else rows.sum(dim=1)
    grads = []
    if with_grad:
        grads = empty_like_each(student)
        _at_feature_grad_kernel[(M * B,)](
            layer_table(student, offs), layer_table(grads, offs), student[0], map_grad, B, float(p),
            KIND=_KIND_POWER_SUM, MODE=pow_mode(p), BLOCK_C=blocks["BLOCK_C"], BLOCK_HW=blocks["BLOCK_N"])
    return (layer_losses * lambdas).sum(), layer_losses, grads
