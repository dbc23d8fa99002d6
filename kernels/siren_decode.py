"""Triton kernels of fused weight decoding (NeRN predictor MLP, paper §2; see
``hyperkd.reference.siren_decode`` for the equations).

Fully fused, as tiny-cuda-nn's MLP: program ``pid`` takes a block of BLOCK_N coordinates, gathers
z₀ = T_ℓ[ℓ] + T_f[f] + T_c[c] and carries the block's activations through every layer in
registers, writing only the N×O kernels. The whole hidden width is one register tile, which suits
widths up to ~128 (the regime where fusion beats cuBLAS GEMM chains); the op hands wider
predictors to the GEMM chain (``hyperkd.ops.siren_decode.FUSED_MAX_WIDTH``).

Backward needs every layer's pre-activation z_i (a sine's derivative needs z, not sin z). When
the forward stored them (SAVE: one extra store of the block's z per layer, (NH+1)×N×H in all),
the backward loads them; otherwise it recomputes z_i from the tables for each layer i, which with
the default 3 hidden layers costs 6 extra block GEMMs but needs no N×H×depth buffer. Weight and
table gradients are accumulated with fp32 atomics.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _act(z, ACT: tl.constexpr):
    if ACT == 1:
        return tl.sin(z)
    else:
        return tl.maximum(z, 0.0)


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    if ACT == 1:
        return tl.cos(z)
    else:
        return (z > 0).to(tl.float32)


@triton.jit
def _indices(index, rows, row_mask):
    i_l = tl.load(index + rows * 3, mask=row_mask, other=0)
    i_f = tl.load(index + rows * 3 + 1, mask=row_mask, other=0)
    i_c = tl.load(index + rows * 3 + 2, mask=row_mask, other=0)
    return i_l, i_f, i_c


@triton.jit
def _first_layer(index, tl_ptr, tf_ptr, tc_ptr, rows, row_mask, cols, col_mask, H):
    i_l, i_f, i_c = _indices(index, rows, row_mask)
    m = row_mask[:, None] & col_mask[None, :]
    z = tl.load(tl_ptr + i_l[:, None] * H + cols[None, :], mask=m, other=0.0).to(tl.float32)
    z += tl.load(tf_ptr + i_f[:, None] * H + cols[None, :], mask=m, other=0.0).to(tl.float32)
    z += tl.load(tc_ptr + i_c[:, None] * H + cols[None, :], mask=m, other=0.0).to(tl.float32)
    return z


@triton.jit
def _hidden(h, hw, hb, layer, cols, col_mask, H, ACT: tl.constexpr):
    """z_{layer+1} = act(z_layer) W_layerᵀ + b_layer on the block (h is already activated)."""
    wm = col_mask[:, None] & col_mask[None, :]
    # wt[i, j] = W[j, i]: the in×out tile of hidden layer `layer`.
    wt = tl.load(hw + layer * H * H + cols[None, :] * H + cols[:, None], mask=wm, other=0.0)
    b = tl.load(hb + layer * H + cols, mask=col_mask, other=0.0).to(tl.float32)
    return tl.dot(h, wt.to(tl.float32)) + b[None, :]


@triton.jit
def _block_tile(saved, layer, rows, cols, N, H):
    """Offsets of the block's rows of layer `layer` in the (NH+1)×N×H pre-activations."""
    return saved + layer * N * H + rows[:, None] * H + cols[None, :]


@triton.jit
def _pre_activation(index, tl_ptr, tf_ptr, tc_ptr, hw, hb, rows, row_mask, cols, col_mask, H,
                    upto, ACT: tl.constexpr, saved, N, SAVE: tl.constexpr):
    """z_upto of the block, computed from the tables; with SAVE every z_0..z_upto is also stored."""
    m = row_mask[:, None] & col_mask[None, :]
    z = _first_layer(index, tl_ptr, tf_ptr, tc_ptr, rows, row_mask, cols, col_mask, H)
    if SAVE:
        tl.store(_block_tile(saved, 0, rows, cols, N, H), z.to(saved.dtype.element_ty), mask=m)
    for layer in range(0, upto):
        z = _hidden(_act(z, ACT), hw, hb, layer, cols, col_mask, H, ACT)
        if SAVE:
            tl.store(_block_tile(saved, layer + 1, rows, cols, N, H), z.to(saved.dtype.element_ty),
                     mask=m)
    return z


@triton.jit
def _decode_kernel(index, tl_ptr, tf_ptr, tc_ptr, hw, hb, ow, ob, out, saved, N, H, O, NH,
                   ACT: tl.constexpr, SAVE: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_O: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    z = _pre_activation(index, tl_ptr, tf_ptr, tc_ptr, hw, hb, rows, row_mask, cols, col_mask, H,
                        NH, ACT, saved, N, SAVE)
    outs = tl.arange(0, BLOCK_O)
    out_mask = outs < O
    owt = tl.load(ow + outs[None, :] * H + cols[:, None],
                  mask=col_mask[:, None] & out_mask[None, :], other=0.0).to(tl.float32)
    y = tl.dot(_act(z, ACT), owt) + tl.load(ob + outs, mask=out_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out + rows[:, None] * O + outs[None, :], y.to(out.dtype.element_ty),
             mask=row_mask[:, None] & out_mask[None, :])


@triton.jit
def _decode_backward_kernel(grad, index, tl_ptr, tf_ptr, tc_ptr, hw, hb, ow, saved,
                            g_tl, g_tf, g_tc, g_hw, g_hb, g_ow, g_ob, N, H, O, NH,
                            ACT: tl.constexpr, SAVED: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_H: tl.constexpr, BLOCK_O: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    cols = tl.arange(0, BLOCK_H)
    col_mask = cols < H
    outs = tl.arange(0, BLOCK_O)
    out_mask = outs < O
    g = tl.load(grad + rows[:, None] * O + outs[None, :],
                mask=row_mask[:, None] & out_mask[None, :], other=0.0).to(tl.float32)
    m = row_mask[:, None] & col_mask[None, :]
    if SAVED:
        z = tl.load(_block_tile(saved, NH, rows, cols, N, H), mask=m, other=0.0).to(tl.float32)
    else:
        z = _pre_activation(index, tl_ptr, tf_ptr, tc_ptr, hw, hb, rows, row_mask, cols, col_mask,
                            H, NH, ACT, saved, N, False)
    h = _act(z, ACT)
    om = col_mask[:, None] & out_mask[None, :]
    tl.atomic_add(g_ow + outs[None, :] * H + cols[:, None], tl.dot(tl.trans(h), g), mask=om)
    tl.atomic_add(g_ob + outs, tl.sum(g, axis=0), mask=out_mask)
    w_out = tl.load(ow + outs[:, None] * H + cols[None, :], mask=out_mask[:, None] & col_mask[None, :],
                    other=0.0).to(tl.float32)
    dh = tl.dot(g, w_out)
    wm = col_mask[:, None] & col_mask[None, :]
    for back in range(0, NH):
        layer = NH - 1 - back  # hidden layer `layer` maps h_layer to z_{layer+1}
        dz = dh * _act_grad(z, ACT)
        if SAVED:
            z = tl.load(_block_tile(saved, layer, rows, cols, N, H), mask=m, other=0.0).to(tl.float32)
        else:
            z = _pre_activation(index, tl_ptr, tf_ptr, tc_ptr, hw, hb, rows, row_mask, cols,
                                col_mask, H, layer, ACT, saved, N, False)
        h = _act(z, ACT)
        # g_hw[layer][o, i] += Σ_r dz[r, o] h[r, i]
        tl.atomic_add(g_hw + layer * H * H + cols[:, None] * H + cols[None, :],
                      tl.dot(tl.trans(dz), h), mask=wm)
        tl.atomic_add(g_hb + layer * H + cols, tl.sum(dz, axis=0), mask=col_mask)
        w = tl.load(hw + layer * H * H + cols[:, None] * H + cols[None, :], mask=wm, other=0.0)
        dh = tl.dot(dz, w.to(tl.float32))
    dz = dh * _act_grad(z, ACT)
    i_l, i_f, i_c = _indices(index, rows, row_mask)
    tl.atomic_add(g_tl + i_l[:, None] * H + cols[None, :], dz, mask=m)
    tl.atomic_add(g_tf + i_f[:, None] * H + cols[None, :], dz, mask=m)
    tl.atomic_add(g_tc + i_c[:, None] * H + cols[None, :], dz, mask=m)


def pre_activation_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """Stored pre-activations are at least fp32: sin(z) of a SIREN's z (tens of radians, ω0 folded
    in) loses its phase in half precision."""
    return torch.promote_types(weight_dtype, torch.float32)


def _blocks(H: int, O: int, N: int):
    # tl.dot needs every dimension ≥ 16.
    block_h = max(16, triton.next_power_of_2(H))
    block_o = max(16, triton.next_power_of_2(O))
    block_n = max(16, min(64, triton.next_power_of_2(N)))
    return block_n, block_h, block_o


def siren_decode(index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight,
                 out_bias, activation: int, save_pre_activations: bool = False):
    """(N×O decoded kernels, pre-activations) from one launch, as the C++ op returns them: the
    pre-activations are (NH+1)×N×H when saved, else an empty tensor, in
    ``pre_activation_dtype``."""
    N, (O, H), NH = index.shape[0], out_weight.shape, hidden_weight.shape[0]
    out = torch.empty(N, O, dtype=out_weight.dtype, device=out_weight.device)
    shape = (NH + 1, N, H) if save_pre_activations else (0,)
    saved = torch.empty(shape, dtype=pre_activation_dtype(out_weight.dtype), device=out_weight.device)
    # Unsaved, `out` stands in for the empty buffer's pointer: the SAVE=False kernel never reads it.
    block_n, block_h, block_o = _blocks(H, O, N)
    _decode_kernel[(triton.cdiv(N, block_n),)](
        index.contiguous(), table_l.contiguous(), table_f.contiguous(), table_c.contiguous(),
        hidden_weight.contiguous(), hidden_bias.contiguous(), out_weight.contiguous(),
        out_bias.contiguous(), out, saved if save_pre_activations else out, N, H, O, NH,
        ACT=activation, SAVE=save_pre_activations, BLOCK_N=block_n, BLOCK_H=block_h,
        BLOCK_O=block_o)
    return out, saved


def siren_decode_backward(grad, index, table_l, table_f, table_c, hidden_weight, hidden_bias,
                          out_weight, out_bias, activation: int, pre_activations):
    """Gradients of the seven weight tensors, accumulated in fp32 and cast to their dtypes; the
    pre-activations are the forward's, or an empty tensor to recompute them."""
    N, (O, H), NH = index.shape[0], out_weight.shape, hidden_weight.shape[0]
    inputs = (table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias)
    grads = [torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in inputs]
    block_n, block_h, block_o = _blocks(H, O, N)
    saved = pre_activations.numel() > 0  # a dummy pointer stands in for the empty tensor
    _decode_backward_kernel[(triton.cdiv(N, block_n),)](
        grad.contiguous(), index.contiguous(), table_l.contiguous(), table_f.contiguous(),
        table_c.contiguous(), hidden_weight.contiguous(), hidden_bias.contiguous(),
        out_weight.contiguous(), pre_activations.contiguous() if saved else grad, *grads,
        N, H, O, NH, ACT=activation, SAVED=saved, BLOCK_N=block_n,
        BLOCK_H=block_h, BLOCK_O=block_o)
    return tuple(g.to(t.dtype) for g, t in zip(grads, inputs))
