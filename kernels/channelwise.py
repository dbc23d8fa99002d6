"""Triton kernels of the per-channel KD losses (LayerKD-HN Eq. 11 and 20–21).

One launch serves every layer through the layer table of :mod:`._layers`; program (m, b) walks the
channels of sample b of layer m in tiles of BLOCK_C channels × BLOCK_HW positions. CwD keeps, per
(sample, channel) row, the student and teacher log-sum-exps (online softmax, one pass); FitNets
keeps the row norms ‖f − g‖. The gradient launch, run in the op's forward, re-reads f and g and
writes the gradient in the student's layout.
"""
import torch
import triton
import triton.language as tl

from hyperkd.kernels._layers import (channel_spatial_blocks, empty_like_each, layer_table, packed_offsets,
                                     row_start, spatial_offsets)

CWD, FITNETS = 0, 1


@triton.jit
def _tile(f_base, t_base, C, W, sc, sh, sw, tsc, tsh, tsw, c, hw, HW):
    """Student and teacher values of a BLOCK_C × BLOCK_HW tile in fp32, its mask and offsets."""
    mask = (c < C)[:, None] & (hw < HW)[None, :]
    off = c[:, None] * sc + spatial_offsets(hw, W, sh, sw)[None, :]
    toff = c[:, None] * tsc + spatial_offsets(hw, W, tsh, tsw)[None, :]
    f = tl.load(f_base + off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(t_base + toff, mask=mask, other=0.0).to(tl.float32)
    return f, g, mask


@triton.jit
def _channelwise_loss_kernel(table, t_table, ptr_carrier, stat_a, stat_b, rows, B, INV_TAU,
                             KIND: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    m, b, C, H, W, sc, sh, sw, off, f_base = row_start(table, ptr_carrier, B)
    _, _, _, _, _, tsc, tsh, tsw, _, t_base = row_start(t_table, ptr_carrier, B)
    HW = H * W
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        if KIND == 0:
            # Online softmax of both rows; a accumulates Σ e^(g/τ − max_t)·(g − f)/τ.
            mx_s = tl.full([BLOCK_C], float("-inf"), tl.float32)
            mx_t = tl.full([BLOCK_C], float("-inf"), tl.float32)
            z_s = tl.zeros([BLOCK_C], dtype=tl.float32)
            z_t = tl.zeros([BLOCK_C], dtype=tl.float32)
            a = tl.zeros([BLOCK_C], dtype=tl.float32)
            for h0 in range(0, HW, BLOCK_HW):
                f, g, mask = _tile(f_base, t_base, C, W, sc, sh, sw, tsc, tsh, tsw, c,
                                         h0 + tl.arange(0, BLOCK_HW), HW)
                fs = tl.where(mask, f * INV_TAU, float("-inf"))
                gs = tl.where(mask, g * INV_TAU, float("-inf"))
                new_s = tl.maximum(mx_s, tl.max(fs, axis=1))
                new_t = tl.maximum(mx_t, tl.max(gs, axis=1))
                # Padded channels keep max −inf; exp(−inf − (−inf)) would be NaN, so guard them.
                safe_s = tl.where(c < C, new_s, 0.0)
                safe_t = tl.where(c < C, new_t, 0.0)
                z_s = z_s * tl.exp(tl.where(c < C, mx_s - safe_s, 0.0)) + tl.sum(tl.exp(fs - safe_s[:, None]), axis=1)
                e_t = tl.exp(gs - safe_t[:, None])
                scale_t = tl.exp(tl.where(c < C, mx_t - safe_t, 0.0))
                z_t = z_t * scale_t + tl.sum(e_t, axis=1)
                a = a * scale_t + tl.sum(tl.where(mask, e_t * (g - f) * INV_TAU, 0.0), axis=1)
                mx_s, mx_t = new_s, new_t
            lse_s = tl.where(c < C, mx_s, 0.0) + tl.log(tl.where(c < C, z_s, 1.0))
            lse_t = tl.where(c < C, mx_t, 0.0) + tl.log(tl.where(c < C, z_t, 1.0))
            tl.store(stat_a + off + b * C + c, lse_s, mask=c < C)
            tl.store(stat_b + off + b * C + c, lse_t, mask=c < C)
            total += tl.where(c < C, a / tl.where(c < C, z_t, 1.0) - lse_t + lse_s, 0.0)
        else:
            sq = tl.zeros([BLOCK_C], dtype=tl.float32)
            for h0 in range(0, HW, BLOCK_HW):
                f, g, mask = _tile(f_base, t_base, C, W, sc, sh, sw, tsc, tsh, tsw, c,
                                         h0 + tl.arange(0, BLOCK_HW), HW)
                d = f - g
                sq += tl.sum(d * d, axis=1)
            n = tl.sqrt(sq)
            tl.store(stat_a + off + b * C + c, n, mask=c < C)
            total += n
    tl.store(rows + m * B + b, tl.sum(total, axis=0))


@triton.jit
def _channelwise_backward_kernel(table, t_table, grad_table, ptr_carrier, stat_a, stat_b, coefs, B,
                                 INV_TAU, KIND: tl.constexpr, BLOCK_C: tl.constexpr,
                                 BLOCK_HW: tl.constexpr):
    m, b, C, H, W, sc, sh, sw, off, f_base = row_start(table, ptr_carrier, B)
    _, _, _, _, _, tsc, tsh, tsw, _, t_base = row_start(t_table, ptr_carrier, B)
    _, _, _, _, _, dsc, dsh, dsw, _, d_base = row_start(grad_table, ptr_carrier, B)
    HW = H * W
    coef = tl.load(coefs + m)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        a = tl.load(stat_a + off + b * C + c, mask=c < C, other=1.0)
        if KIND == 0:
            lse_t = tl.load(stat_b + off + b * C + c, mask=c < C, other=0.0)
        for h0 in range(0, HW, BLOCK_HW):
            hw = h0 + tl.arange(0, BLOCK_HW)
            f, g, mask = _tile(f_base, t_base, C, W, sc, sh, sw, tsc, tsh, tsw, c, hw, HW)
            if KIND == 0:
                d = coef * (tl.exp(f * INV_TAU - a[:, None]) - tl.exp(g * INV_TAU - lse_t[:, None]))
            else:
                d = tl.where(a[:, None] > 0, coef * (f - g) / a[:, None], 0.0)
            doff = c[:, None] * dsc + spatial_offsets(hw, W, dsh, dsw)[None, :]
            tl.store(d_base + doff, d.to(ptr_carrier.dtype.element_ty), mask=mask)


def _offsets(feats):
    """Start of each layer's B×C block of per-(sample, channel) statistics, and the total."""
    return packed_offsets([f.shape[0] * f.shape[1] for f in feats])


TILE = 2048  # elements of a BLOCK_C × BLOCK_HW tile


def _forward(kind, student, teacher, tau):
    B, M = student[0].shape[0], len(student)
    device = student[0].device
    offs, total = _offsets(student)
    stat_a = torch.empty(total, dtype=torch.float32, device=device)
    stat_b = torch.empty(total if kind == CWD else 0, dtype=torch.float32, device=device)
    rows = torch.empty(M, B, dtype=torch.float32, device=device)
    block_c, block_hw = channel_spatial_blocks(student, TILE)
    _channelwise_loss_kernel[(M * B,)](
        layer_table(student, offs), layer_table(teacher, offs), student[0], stat_a, stat_b, rows, B,
        1.0 / tau, KIND=kind, BLOCK_C=block_c, BLOCK_HW=block_hw)
    return rows.sum(dim=1), stat_a, stat_b


def _backward(kind, coefs, student, teacher, stat_a, stat_b, tau):
    M = len(student)
    offs, _ = _offsets(student)
    grads = empty_like_each(student)
    block_c, block_hw = channel_spatial_blocks(student, TILE)
    _channelwise_backward_kernel[(M * student[0].shape[0],)](
        layer_table(student, offs), layer_table(teacher, offs), layer_table(grads, offs), student[0],
        stat_a, stat_b, coefs.to(torch.float32).contiguous(), student[0].shape[0], 1.0 / tau,
        KIND=kind, BLOCK_C=block_c, BLOCK_HW=block_hw)
    return grads


def _cwd_scales(student, tau):
    """τ²/(C·B) per layer (Eq. 21 with Shu et al.'s batch mean)."""
    B = student[0].shape[0]
    return torch.tensor([tau * tau / (f.shape[1] * B) for f in student], dtype=torch.float32).to(
        student[0].device, non_blocking=True)


def cwd_loss(student, teacher, lambdas, tau: float, with_grad: bool):
    """(λ_m L_m, L_m, and with ``with_grad`` d(Σ_m λ_m L_m)/df_m) as the CPU op returns them. The
    gradient launch runs in forward, from the log-sum-exps that the loss launch leaves."""
    rows, lse_s, lse_t = _forward(CWD, student, teacher, tau)
    scales = _cwd_scales(student, tau)
    losses = rows * scales
    # dL/df = λ_m · τ²/(C·B) · (p_s − p_t)/τ.
    grads = _backward(CWD, lambdas * scales / tau, student, teacher, lse_s, lse_t, tau) if with_grad else []
    return lambdas * losses, losses, grads


def fitnets_loss(student, teacher, lambdas, with_grad: bool):
    """(λ_m L_m, L_m with L_m = Σ‖f − g‖₂ over (sample, channel) rows, and with ``with_grad`` the
    gradients of Σ_m λ_m L_m), the gradient launch reading the loss launch's row norms."""
    losses, norms, empty = _forward(FITNETS, student, teacher, 1.0)
    grads = _backward(FITNETS, lambdas, student, teacher, norms, empty, 1.0) if with_grad else []
    return lambdas * losses, losses, grads
