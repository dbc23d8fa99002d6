"""Triton kernels of fused attention-transfer KD (LayerKD-HN Eq. 4–7).

Every layer of a call is served by one launch, a program per (layer, sample) row reaching its
feature through the layer table of :mod:`._layers`, so features are read in place, channels_last
and sliced ones included. The loss launch ends each row by turning its
normalised map into dL/dS (B×ΣHW, λ_m and the reduction folded in); the gradient launch re-reads
each feature once to write its gradient. Both run in the op's forward: the loss is a scalar, so the
gradient is final up to the incoming gradient's factor, which autograd applies.
"""
import torch
import triton
import triton.language as tl

from hyperkd.kernels._layers import (channel_spatial_blocks, empty_like_each, layer_table, packed_offsets,
                                     pointer_table, row_start, spatial_offsets)

POW_GENERAL, POW_ONE, POW_TWO = 0, 1, 2


def pow_mode(p: float) -> int:
    return POW_ONE if p == 1.0 else POW_TWO if p == 2.0 else POW_GENERAL


def map_offsets(feats):
    """Start of each layer's B×HW block in the packed maps buffer, and the total length."""
    return packed_offsets([f.shape[0] * f.shape[2] * f.shape[3] for f in feats])


@triton.jit
def _power(a, P, MODE: tl.constexpr):
    if MODE == 1:
        return a
    elif MODE == 2:
        return a * a
    else:
        # a ≥ 0 and P > 0: exp2(P·log2 0) = exp2(−inf) = 0, as 0^P should be.
        return tl.exp2(P * tl.log2(a))


@triton.jit
def _sign(x):
    return (x > 0).to(tl.float32) - (x < 0).to(tl.float32)


@triton.jit
def _spatial_block(f_base, C, W, sc, sh, sw, hw, hw_mask, P,
                   KIND: tl.constexpr, MODE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """S of Eq. 4–6 for a block of spatial positions of one sample, in fp32."""
    sp = spatial_offsets(hw, W, sh, sw)
    acc = tl.zeros([BLOCK_HW], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & hw_mask[None, :]
        a = tl.abs(tl.load(f_base + c[:, None] * sc + sp[None, :], mask=mask, other=0.0).to(tl.float32))
        if KIND == 0:
            acc += tl.sum(a, axis=0)
        elif KIND == 1:
            acc += tl.sum(_power(a, P, MODE), axis=0)
        else:
            acc = tl.maximum(acc, tl.max(a, axis=0))
    if KIND == 2:
        acc = _power(acc, P, MODE)
    return acc


@triton.jit
def _normalised_row(f_base, q_row, C, W, sc, sh, sw, HW, P, EPS,
                    KIND: tl.constexpr, MODE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Writes q = S/max(‖S‖, eps) of one sample to q_row (fp32) and returns ‖S‖."""
    sq = tl.zeros([BLOCK_HW], dtype=tl.float32)
    for h0 in range(0, HW, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)
        hw_mask = hw < HW
        s = _spatial_block(f_base, C, W, sc, sh, sw, hw, hw_mask, P, KIND, MODE, BLOCK_C, BLOCK_HW)
        s = tl.where(hw_mask, s, 0.0)
        sq += s * s
        tl.store(q_row + hw, s, mask=hw_mask)
    n = tl.sqrt(tl.sum(sq, axis=0))
    inv = 1.0 / tl.maximum(n, EPS)
    for h0 in range(0, HW, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)
        hw_mask = hw < HW
        tl.store(q_row + hw, tl.load(q_row + hw, mask=hw_mask) * inv, mask=hw_mask)
    return n


@triton.jit
def _at_summary_kernel(table, ptr_carrier, out, B, P, EPS,
                       KIND: tl.constexpr, MODE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    m, b, C, H, W, sc, sh, sw, off, f_base = row_start(table, ptr_carrier, B)
    q_row = tl.load(out + m).to(tl.pointer_type(tl.float32)) + b * H * W
    _normalised_row(f_base, q_row, C, W, sc, sh, sw, H * W, P, EPS, KIND, MODE, BLOCK_C, BLOCK_HW)


@triton.jit
def _row_loss_grad(d, row, P, MODE: tl.constexpr, MEAN: tl.constexpr):
    """dL/dq of one row whose loss is `row` (the p-norm of d for "sum", Σd² for "mean")."""
    if MEAN:
        return d
    elif MODE == 1:
        return _sign(d)
    elif MODE == 2:
        return tl.where(row > 0, d / row, 0.0)
    else:
        ratio = tl.abs(d) / row
        return tl.where(row > 0, tl.exp2((P - 1.0) * tl.log2(ratio)) * _sign(d), 0.0)


@triton.jit
def _at_loss_kernel(table, ptr_carrier, teacher, lambdas, map_grad, rows, B, P, EPS,
                    KIND: tl.constexpr, MODE: tl.constexpr, MEAN: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    m, b, C, H, W, sc, sh, sw, off, f_base = row_start(table, ptr_carrier, B)
    HW = H * W
    q_row = map_grad + off + b * HW
    n = _normalised_row(f_base, q_row, C, W, sc, sh, sw, HW, P, EPS, KIND, MODE, BLOCK_C, BLOCK_HW)
    t_row = tl.load(teacher + m).to(tl.pointer_type(tl.float32)) + b * HW
    r = tl.zeros([BLOCK_HW], dtype=tl.float32)
    for h0 in range(0, HW, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)
        hw_mask = hw < HW
        d = tl.load(q_row + hw, mask=hw_mask, other=0.0) - tl.load(t_row + hw, mask=hw_mask, other=0.0)
        if MEAN:
            r += d * d
        else:
            r += _power(tl.abs(d), P, MODE)
    row = tl.sum(r, axis=0)
    if not MEAN:
        if MODE == 2:
            row = tl.sqrt(row)
        elif MODE == 0:
            row = tl.exp2(tl.log2(row) / P)
    tl.store(rows + m * B + b, row)
    scale = tl.load(lambdas + m)
    if MEAN:
        scale = scale * 2.0 / (B * HW).to(tl.float32)
    # Through q = S/max(‖S‖, eps): g_S = (g − q⟨q, g⟩)/‖S‖, or g/eps where the norm was clamped.
    dot_acc = tl.zeros([BLOCK_HW], dtype=tl.float32)
    for h0 in range(0, HW, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)
        hw_mask = hw < HW
        q = tl.load(q_row + hw, mask=hw_mask, other=0.0)
        g = _row_loss_grad(q - tl.load(t_row + hw, mask=hw_mask, other=0.0), row, P, MODE, MEAN)
        dot_acc += tl.where(hw_mask, g * q, 0.0)
    dot = tl.sum(dot_acc, axis=0)
    clamped = n <= EPS
    for h0 in range(0, HW, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)
        hw_mask = hw < HW
        q = tl.load(q_row + hw, mask=hw_mask, other=0.0)
        g = _row_loss_grad(q - tl.load(t_row + hw, mask=hw_mask, other=0.0), row, P, MODE, MEAN)
        tl.store(q_row + hw, scale * tl.where(clamped, g / EPS, (g - q * dot) / n), mask=hw_mask)


@triton.jit
def _at_feature_grad_kernel(table, grad_table, ptr_carrier, map_grad, B, P,
                            KIND: tl.constexpr, MODE: tl.constexpr,
                            BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    m, b, C, H, W, sc, sh, sw, off, f_base = row_start(table, ptr_carrier, B)
    _, _, _, _, _, dsc, dsh, dsw, _, df_base = row_start(grad_table, ptr_carrier, B)
    HW = H * W
    gS_row = map_grad + off + b * HW
    for h0 in range(0, HW, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)
        hw_mask = hw < HW
        g_s = tl.load(gS_row + hw, mask=hw_mask, other=0.0)
        sp = spatial_offsets(hw, W, sh, sw)
        dsp = spatial_offsets(hw, W, dsh, dsw)
        if KIND == 2:
            # The gradient goes to the channels attaining max|f|, split among ties like torch.amax.
            amax = tl.zeros([BLOCK_HW], dtype=tl.float32)
            ties = tl.zeros([BLOCK_HW], dtype=tl.float32)
            for c0 in range(0, C, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                mask = (c < C)[:, None] & hw_mask[None, :]
                a = tl.abs(tl.load(f_base + c[:, None] * sc + sp[None, :], mask=mask, other=0.0).to(tl.float32))
                a = tl.where(mask, a, -1.0)
                blk_max = tl.max(a, axis=0)
                blk_ties = tl.sum((a == blk_max[None, :]).to(tl.float32), axis=0)
                new_max = tl.maximum(amax, blk_max)
                ties = tl.where(amax == new_max, ties, 0.0) + tl.where(blk_max == new_max, blk_ties, 0.0)
                amax = new_max
            if MODE == 1:
                dpow = tl.full([BLOCK_HW], 1.0, tl.float32)
            elif MODE == 2:
                dpow = 2.0 * amax
            else:
                dpow = P * tl.exp2((P - 1.0) * tl.log2(amax))
            g_s = g_s * dpow / tl.maximum(ties, 1.0)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            mask = (c < C)[:, None] & hw_mask[None, :]
            x = tl.load(f_base + c[:, None] * sc + sp[None, :], mask=mask, other=0.0).to(tl.float32)
            if KIND == 0:
                d = _sign(x)
            elif KIND == 1:
                if MODE == 1:
                    d = _sign(x)
                elif MODE == 2:
                    d = 2.0 * x
                else:
                    d = P * tl.exp2((P - 1.0) * tl.log2(tl.abs(x))) * _sign(x)
            else:
                d = tl.where(tl.abs(x) == amax[None, :], _sign(x), 0.0)
            tl.store(df_base + c[:, None] * dsc + dsp[None, :], (g_s[None, :] * d).to(ptr_carrier.dtype.element_ty), mask=mask)


TILE = 4096  # elements of a BLOCK_C × BLOCK_HW tile


def at_summary(feats, kind: int, p: float, eps: float):
    """Normalised attention maps, one fp32 B×HW tensor per layer, from one launch."""
    B = feats[0].shape[0]
    out = [torch.empty(B, f.shape[2] * f.shape[3], dtype=torch.float32, device=f.device) for f in feats]
    block_c, block_hw = channel_spatial_blocks(feats, TILE)
    _at_summary_kernel[(len(feats) * B,)](
        layer_table(feats), feats[0], pointer_table(out), B, float(p), float(eps),
        KIND=kind, MODE=pow_mode(p), BLOCK_C=block_c, BLOCK_HW=block_hw)
    return out


def at_loss(student, teacher, lambdas, kind: int, p: float, eps: float, mean: bool, with_grad: bool):
    """Eq. 7: (loss, layer_losses, grads) as the CPU op returns them; a teacher entry is a summary
    or a raw feature. The loss launch leaves dL/dS (B×ΣHW) for the gradient launch, which reads
    each feature once more (kind 2: twice) and writes its gradient; dL/dS is freed on return."""
    B, M = student[0].shape[0], len(student)
    device = student[0].device
    raw = [m for m, t in enumerate(teacher) if t.dim() == 4]
    if raw:  # summarised first, in one launch: B×HW maps, a C-th of each raw feature
        teacher = list(teacher)
        for m, summary in zip(raw, at_summary([teacher[m] for m in raw], kind, p, eps)):
            teacher[m] = summary
    offs, total = map_offsets(student)
    map_grad = torch.empty(total, dtype=torch.float32, device=device)
    rows = torch.empty(M, B, dtype=torch.float32, device=device)
    block_c, block_hw = channel_spatial_blocks(student, TILE)
    _at_loss_kernel[(M * B,)](
        layer_table(student, offs), student[0], pointer_table(teacher), lambdas, map_grad, rows, B,
        float(p), float(eps), KIND=kind, MODE=pow_mode(p), MEAN=mean,
        BLOCK_C=block_c, BLOCK_HW=block_hw)
    layer_losses = rows.sum(dim=1)
    if mean:
        hw = torch.tensor([f.shape[2] * f.shape[3] for f in student], dtype=torch.float32)
        layer_losses = layer_losses / (B * hw).to(device, non_blocking=True)
    grads = []
    if with_grad:
        grads = empty_like_each(student)
        _at_feature_grad_kernel[(M * B,)](
            layer_table(student, offs), layer_table(grads, offs), student[0], map_grad, B,
            float(p), KIND=kind, MODE=pow_mode(p), BLOCK_C=block_c, BLOCK_HW=block_hw)
    return (layer_losses * lambdas).sum(), layer_losses, grads
