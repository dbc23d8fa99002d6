"""Triton kernels of the relational KD family (SP, RKD; LayerKD-HN Eq. 14–18, 22–27): the two
passes over the features. Everything else works on the B×B Gram matrices.

``gram``: G = Q·Qᵀ per layer, Q the B×D flattened feature, one launch for all layers; program
(m, i) writes row i of layer m. ``gram_backward``: dQ = S·Q with S = dG + dGᵀ given per layer;
program (m, i) writes sample i's gradient in the feature's own layout. Features are reached through
the layer table of :mod:`._layers`, so strided inputs are read in place.
"""
import torch
import triton
import triton.language as tl

from hyperkd.kernels._layers import (element_offsets, empty_like_each, layer_table, pointer_table, row_start,
                                     sample_block, sample_stride)


@triton.jit
def _gram_kernel(table, ptr_carrier, out, B, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    m, i, C, H, W, sc, sh, sw, _, q_i = row_start(table, ptr_carrier, B)
    sb = sample_stride(table, m)
    q_all = q_i - i * sb
    j = tl.arange(0, BLOCK_B)
    j_mask = j < B
    acc = tl.zeros([BLOCK_B], dtype=tl.float32)
    for d0 in range(0, C * H * W, BLOCK_D):
        _, valid, off = element_offsets(C, H, W, sc, sh, sw, d0, BLOCK_D)
        row = tl.load(q_i + off, mask=valid, other=0.0).to(tl.float32)
        blk = tl.load(q_all + j[:, None] * sb + off[None, :], mask=j_mask[:, None] & valid[None, :],
                      other=0.0).to(tl.float32)
        acc += tl.sum(blk * row[None, :], axis=1)
    g_row = tl.load(out + m).to(tl.pointer_type(tl.float32)) + i * B
    tl.store(g_row + j, acc, mask=j_mask)


@triton.jit
def _gram_backward_kernel(table, grad_table, ptr_carrier, s_ptrs, B, BLOCK_B: tl.constexpr,
                          BLOCK_D: tl.constexpr):
    m, i, C, H, W, sc, sh, sw, _, q_i = row_start(table, ptr_carrier, B)
    _, _, _, _, _, dsc, dsh, dsw, _, dq_i = row_start(grad_table, ptr_carrier, B)
    sb = sample_stride(table, m)
    q_all = q_i - i * sb
    j = tl.arange(0, BLOCK_B)
    j_mask = j < B
    s_row = tl.load(tl.load(s_ptrs + m).to(tl.pointer_type(tl.float32)) + i * B + j, mask=j_mask, other=0.0)
    for d0 in range(0, C * H * W, BLOCK_D):
        _, valid, off = element_offsets(C, H, W, sc, sh, sw, d0, BLOCK_D)
        _, _, doff = element_offsets(C, H, W, dsc, dsh, dsw, d0, BLOCK_D)
        blk = tl.load(q_all + j[:, None] * sb + off[None, :], mask=j_mask[:, None] & valid[None, :],
                      other=0.0).to(tl.float32)
        dq = tl.sum(blk * s_row[:, None], axis=0)
        tl.store(dq_i + doff, dq.to(ptr_carrier.dtype.element_ty), mask=valid)


def _blocks(feats, B):
    block_b = triton.next_power_of_2(B)
    return block_b, max(sample_block(feats, 8192 // block_b), 16)


def gram(feats):
    """fp32 B×B Gram matrices, one per layer, from one launch."""
    B, M = feats[0].shape[0], len(feats)
    out = [torch.empty(B, B, dtype=torch.float32, device=f.device) for f in feats]
    block_b, block_d = _blocks(feats, B)
    _gram_kernel[(M * B,)](layer_table(feats), feats[0], pointer_table(out), B,
                           BLOCK_B=block_b, BLOCK_D=block_d)
    return out


def gram_backward(dgrams, feats):
    """dL/dQ for each layer from dL/dG (B×B per layer), in each feature's layout and dtype."""
    B, M = feats[0].shape[0], len(feats)
    sym = [(d + d.t()).to(torch.float32).contiguous() for d in dgrams]
    grads = empty_like_each(feats)
    block_b, block_d = _blocks(feats, B)
    _gram_backward_kernel[(M * B,)](layer_table(feats), layer_table(grads), feats[0],
                                    pointer_table(sym), B, BLOCK_B=block_b, BLOCK_D=block_d)
    return grads
