"""Triton kernels of fused MIP weight generation (LayerKD-HN Eq. 2–3).

One launch serves every generated tensor: program ``pid`` handles BLOCK_P rows of W inside one
layer, found through ``block_layer``. Each program loads its W tile once and uses it for all B_γ
codes, so W is read exactly once per call. Layers are reached through an int64 table of
(pointer, first row, numel, sizes, strides) per layer (see :func:`layer_table`), so each kernel is
written in its final layout (contiguous or channels_last) and gradients are read in whatever
strides autograd hands back.
"""
import torch
import triton
import triton.language as tl

_NCOL = 11  # pointer, first row, numel, n1, n2, n3, s0, s1, s2, s3, batch stride
BLOCK_P = 128


def _padded(t: torch.Tensor, ndim: int):
    """Sizes and strides of one sample of ``t`` (B×shape), left-padded to 4 dims."""
    pad = 4 - ndim
    return [1] * pad + list(t.shape[1:]), [0] * pad + list(t.stride()[1:])


def layer_table(tensors, ndims, offsets) -> torch.Tensor:
    rows = []
    for t, ndim, off in zip(tensors, ndims, offsets):
        sizes, strides = _padded(t, ndim)
        numel = sizes[0] * sizes[1] * sizes[2] * sizes[3]
        rows.append([t.data_ptr(), off, numel, *sizes[1:], *strides, t.stride(0)])
    return torch.tensor(rows, dtype=torch.int64).to(tensors[0].device, non_blocking=True)


def block_schedule(numels, device):
    """(layer of each program, first program of each layer) for BLOCK_P rows per program."""
    counts = [triton.cdiv(n, BLOCK_P) for n in numels]
    layer = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), torch.tensor(counts))
    first = torch.tensor([0] + counts[:-1], dtype=torch.int64).cumsum(0)
    return layer.to(device, non_blocking=True), first.to(device, non_blocking=True), sum(counts)


@triton.jit
def _rows(table, block_layer, block_first, BLOCK_P: tl.constexpr):
    """(table row, local rows, row mask, addresses of those rows inside one sample)."""
    pid = tl.program_id(0)
    layer = tl.load(block_layer + pid)
    row = table + layer * 11
    numel = tl.load(row + 2)
    n1, n2, n3 = tl.load(row + 3), tl.load(row + 4), tl.load(row + 5)
    s0, s1, s2, s3 = tl.load(row + 6), tl.load(row + 7), tl.load(row + 8), tl.load(row + 9)
    local = (pid - tl.load(block_first + layer)) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = local < numel
    i3 = local % n3
    rest = local // n3
    i2 = rest % n2
    rest = rest // n2
    addr = (rest // n1) * s0 + (rest % n1) * s1 + i2 * s2 + i3 * s3
    return row, local, mask, addr


@triton.jit
def _generate_kernel(table, block_layer, block_first, W, z, theta0, carried, B, D, P,
                     CARRIED: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    row, local, mask, addr = _rows(table, block_layer, block_first, BLOCK_P)
    out = tl.load(row).to(tl.pointer_type(tl.float32))
    p = tl.load(row + 1) + local
    numel = tl.load(row + 2)
    base = tl.load(theta0 + p, mask=mask, other=0.0)
    if CARRIED:
        # W·z was generated ahead by the previous step's fused update: W is not read.
        for s in range(B):
            tl.store(out + s * numel + addr, tl.load(carried + s * P + p, mask=mask, other=0.0) + base, mask=mask)
    else:
        k = tl.arange(0, BLOCK_D)
        w = tl.load(W + p[:, None] * D + k[None, :], mask=mask[:, None] & (k < D)[None, :], other=0.0)
        w = w.to(tl.float32)
        for s in range(B):
            zs = tl.load(z + s * D + k, mask=k < D, other=0.0)
            tl.store(out + s * numel + addr, tl.sum(w * zs[None, :], axis=1) + base, mask=mask)


@triton.jit
def _generate_backward_kernel(table, block_layer, block_first, W, dtheta, partial, B, D, P,
                              BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    row, local, mask, addr = _rows(table, block_layer, block_first, BLOCK_P)
    grad = tl.load(row).to(tl.pointer_type(tl.float32))
    p = tl.load(row + 1) + local
    batch_stride = tl.load(row + 10)
    k = tl.arange(0, BLOCK_D)
    w = tl.load(W + p[:, None] * D + k[None, :], mask=mask[:, None] & (k < D)[None, :], other=0.0)
    w = w.to(tl.float32)
    pid = tl.program_id(0)
    for s in range(B):
        g = tl.load(grad + s * batch_stride + addr, mask=mask, other=0.0)
        tl.store(dtheta + s * P + p, g, mask=mask)
        tl.store(partial + (pid * B + s) * D + k, tl.sum(w * g[:, None], axis=0), mask=k < D)


def _layer_offsets(numels):
    offs, total = [], 0
    for n in numels:
        offs.append(total)
        total += n
    return offs


def _numels(sizes):
    return [sizes[i] * sizes[i + 1] * sizes[i + 2] * sizes[i + 3] for i in range(0, len(sizes), 4)]


def empty_outputs(z, ndims, sizes, channels_last):
    """One B_γ×(*shape) tensor per layer, each sample contiguous or channels_last."""
    B = z.shape[0]
    out = []
    for l, ndim in enumerate(ndims):
        n = sizes[4 * l:4 * l + 4]
        shape = n[4 - ndim:]
        numel = n[0] * n[1] * n[2] * n[3]
        if channels_last[l]:
            strides = [n[1] * n[2] * n[3], 1, n[3] * n[1], n[1]]
        else:
            strides = [n[1] * n[2] * n[3], n[2] * n[3], n[3], 1][4 - ndim:]
        out.append(torch.empty_strided([B, *shape], [numel, *strides], dtype=z.dtype, device=z.device))
    return out


def hyper_generate(W, z, theta0, ndims, sizes, channels_last, carried=None):
    """θ = W·z + θ0 (or carried + θ0, carried = W·z generated ahead) for every row of z, written
    per layer in its final layout."""
    out = empty_outputs(z, ndims, sizes, channels_last)
    numels = _numels(sizes)
    layer, first, grid = block_schedule(numels, W.device)
    _generate_kernel[(grid,)](layer_table(out, ndims, _layer_offsets(numels)), layer, first, W, z, theta0,
                              theta0 if carried is None else carried, z.shape[0], W.shape[1], W.shape[0],
                              CARRIED=carried is not None, BLOCK_P=BLOCK_P,
                              BLOCK_D=triton.next_power_of_2(W.shape[1]))
    return out


def hyper_generate_backward(grads, W, z, ndims, sizes, channels_last):
    """(dz, dθ packed B_γ×P) from one pass over W (Σ_γ dθ is the caller's: see the CPU kernel)."""
    B, (P, D) = z.shape[0], W.shape
    numels = _numels(sizes)
    layer, first, grid = block_schedule(numels, W.device)
    dtheta = torch.empty(B, P, dtype=z.dtype, device=z.device)
    partial = torch.empty(grid, B, D, dtype=z.dtype, device=z.device)
    _generate_backward_kernel[(grid,)](layer_table(list(grads), ndims, _layer_offsets(numels)), layer,
                                       first, W, dtheta, partial, B, D, P,
                                       BLOCK_P=BLOCK_P, BLOCK_D=triton.next_power_of_2(D))
    return partial.sum(0), dtheta
