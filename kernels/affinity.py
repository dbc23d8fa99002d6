"""Triton kernels of the affinity family (mAKD Eq. 4–7): the passes over the features. The Gram of
IP, CS and L2 is :mod:`relational`'s; this module adds the L1 distances, which have no product form.

``l1_distances``: D_ij = Σ_k |q_ik − q_jk| per layer, program i writing row i. ``l1_backward``:
dQ_ik = Σ_j S_ij sign(q_ik − q_jk) with S = dD + dDᵀ, program (i, column block) recomputing the
signs from a B×BLOCK_D tile of Q, so no B×B×D tensor exists. Q is a contiguous B×D matrix.
"""
import torch
import triton
import triton.language as tl

from hyperkd.kernels import relational


@triton.jit
def _l1_distance_kernel(q, out, B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0)
    j = tl.arange(0, BLOCK_B)
    j_mask = j < B
    acc = tl.zeros([BLOCK_B], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        row = tl.load(q + i * D + d, mask=d_mask, other=0.0).to(tl.float32)
        blk = tl.load(q + j[:, None] * D + d[None, :], mask=j_mask[:, None] & d_mask[None, :],
                      other=0.0).to(tl.float32)
        acc += tl.sum(tl.abs(blk - row[None, :]), axis=1)
    tl.store(out + i * B + j, acc, mask=j_mask)


@triton.jit
def _l1_backward_kernel(q, s, dq, B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    j = tl.arange(0, BLOCK_B)
    j_mask = j < B
    s_row = tl.load(s + i * B + j, mask=j_mask, other=0.0)
    row = tl.load(q + i * D + d, mask=d_mask, other=0.0).to(tl.float32)
    blk = tl.load(q + j[:, None] * D + d[None, :], mask=j_mask[:, None] & d_mask[None, :],
                  other=0.0).to(tl.float32)
    diff = row[None, :] - blk
    # sign(0) = 0: equal features (the diagonal, ReLU zeros) contribute nothing.
    sign = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
    grad = tl.sum(sign * s_row[:, None], axis=0)
    tl.store(dq + i * D + d, grad.to(dq.dtype.element_ty), mask=d_mask)


def _blocks(B, D):
    block_b = triton.next_power_of_2(B)
    return block_b, max(min(triton.next_power_of_2(D), 8192 // block_b), 16)


def l1_distances(rows):
    """fp32 B×B L1 distance matrices of contiguous B×D_m matrices, one launch per layer."""
    out = []
    for q in rows:
        q = q.contiguous()
        B, D = q.shape
        d = torch.empty(B, B, dtype=torch.float32, device=q.device)
        block_b, block_d = _blocks(B, D)
        _l1_distance_kernel[(B,)](q, d, B, D, BLOCK_B=block_b, BLOCK_D=block_d)
        out.append(d)
    return out


def l1_backward(sym, rows):
    """dL/dQ per layer from S = dD + dDᵀ (fp32 B×B), in each matrix's dtype."""
    grads = []
    for s, q in zip(sym, rows):
        q = q.contiguous()
        B, D = q.shape
        dq = torch.empty_like(q)
        block_b, block_d = _blocks(B, D)
        _l1_backward_kernel[(B, triton.cdiv(D, block_d))](q, s.contiguous(), dq, B, D,
                                                         BLOCK_B=block_b, BLOCK_D=block_d)
        grads.append(dq)
    return grads


def pair_matrices(rows, aff):
    """The per-layer B×B pair matrix of the affinity: L1 distances, or the Gram (IP, CS, L2)."""
    if aff == "l1":
        return l1_distances(rows)
    return relational.gram([q[:, :, None, None] for q in rows])


def pair_backward(dpairs, rows, aff):
    """dL/dQ from dL/d(pair matrix) per layer."""
    if aff == "l1":
        sym = [(d + d.t()).to(torch.float32) for d in dpairs]
        for s in sym:
            s.fill_diagonal_(0)
        return l1_backward(sym, rows)
    return [g.reshape(q.shape) for g, q in zip(
        relational.gram_backward(dpairs, [q[:, :, None, None] for q in rows]), rows)]
