"""Triton kernels of fused activation-boundary KD (LayerKD-HN Eq. 8 and 10, squared hinge).

One launch serves every layer: program ``pid`` handles row (layer m = pid // B, sample b) and
reaches its feature through the layer table of :mod:`._layers`, so strided and
channels_last inputs are read in place. The teacher is the bit mask written by
``pack_positive_mask``; the loss launch keeps one fp32 sum per row, and the gradient launch, run in
the op's forward, re-reads feature and mask.
"""
import torch
import triton
import triton.language as tl

from hyperkd.kernels._layers import (element_offsets, empty_like_each, layer_table, pointer_table, row_start,
                                     sample_block)


@triton.jit
def _mask_bits(mask_row, e, valid):
    """Bit e of a packed per-sample mask, as 0/1 int32."""
    byte = tl.load(mask_row + (e >> 3), mask=valid, other=0).to(tl.int32)
    return (byte >> (e & 7)) & 1


@triton.jit
def _hinge_residual(x, bit, MU):
    """(f − μ)·[f ≤ μ ∧ ρ] + (f + μ)·[f > −μ ∧ ¬ρ]: ℓ = residual², dℓ/df = 2·residual."""
    pos = bit == 1
    return tl.where(pos, tl.where(x <= MU, x - MU, 0.0), tl.where(x > -MU, x + MU, 0.0))


@triton.jit
def _ab_loss_kernel(table, ptr_carrier, masks, rows, B, MU, BLOCK: tl.constexpr):
    m, b, C, H, W, sc, sh, sw, _, f_base = row_start(table, ptr_carrier, B)
    n = C * H * W
    mask_row = tl.load(masks + m).to(tl.pointer_type(tl.uint8)) + b * ((n + 7) // 8)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for e0 in range(0, n, BLOCK):
        e, valid, off = element_offsets(C, H, W, sc, sh, sw, e0, BLOCK)
        x = tl.load(f_base + off, mask=valid, other=0.0).to(tl.float32)
        r = _hinge_residual(x, _mask_bits(mask_row, e, valid), MU)
        acc += tl.where(valid, r * r, 0.0)
    tl.store(rows + m * B + b, tl.sum(acc, axis=0))


@triton.jit
def _ab_feature_grad_kernel(table, grad_table, ptr_carrier, masks, grad, B, MU, BLOCK: tl.constexpr):
    m, b, C, H, W, sc, sh, sw, _, f_base = row_start(table, ptr_carrier, B)
    _, _, _, _, _, dsc, dsh, dsw, _, df_base = row_start(grad_table, ptr_carrier, B)
    n = C * H * W
    mask_row = tl.load(masks + m).to(tl.pointer_type(tl.uint8)) + b * ((n + 7) // 8)
    coef = 2.0 * tl.load(grad + m).to(tl.float32) / B
    for e0 in range(0, n, BLOCK):
        e, valid, off = element_offsets(C, H, W, sc, sh, sw, e0, BLOCK)
        _, _, doff = element_offsets(C, H, W, dsc, dsh, dsw, e0, BLOCK)
        x = tl.load(f_base + off, mask=valid, other=0.0).to(tl.float32)
        r = _hinge_residual(x, _mask_bits(mask_row, e, valid), MU)
        tl.store(df_base + doff, (coef * r).to(ptr_carrier.dtype.element_ty), mask=valid)


MAX_BLOCK = 2048  # the most elements of a sample one step of a row's loop covers


def ab_loss(student, masks, lambdas, margin: float, with_grad: bool):
    """(λ_m L_m, L_m = Σ ℓ / B of Eq. 10, and with ``with_grad`` d(Σ_m λ_m L_m)/df_m) as the CPU op
    returns them: the loss launch, then in the same forward the gradient launch."""
    B, M = student[0].shape[0], len(student)
    rows = torch.empty(M, B, dtype=torch.float32, device=student[0].device)
    _ab_loss_kernel[(M * B,)](layer_table(student), student[0], pointer_table(masks), rows, B,
                              float(margin), BLOCK=sample_block(student, MAX_BLOCK))
    losses = rows.sum(dim=1) / B
    grads = []
    if with_grad:
        grads = empty_like_each(student)
        _ab_feature_grad_kernel[(M * B,)](
            layer_table(student), layer_table(grads), student[0], pointer_table(masks),
            lambdas.to(torch.float32).contiguous(), B, float(margin), BLOCK=sample_block(student, MAX_BLOCK))
    return lambdas * losses, losses, grads
