"""Shared plumbing of the fused layer-list Triton kernels, the twin of ``csrc/cpu/layers.h``.

Every layer of a call is served by one launch: program ``pid`` handles the row (layer
``m = pid // B``, sample ``b = pid % B``). Layers of different shapes and strides are reached through
the layer table, one int64 row per layer with the named columns below (``layers.h``'s
``FeatureView``: data pointer, C, H, W and the four strides, plus where the layer's rows start in
a packed per-row buffer), so features are read in place, channels_last and sliced ones included.
Module-level constants used inside ``@triton.jit`` code must be ``tl.constexpr``.
"""
import torch
import triton
import triton.language as tl

# Columns of the layer table.
COL_PTR = tl.constexpr(0)
COL_C = tl.constexpr(1)
COL_H = tl.constexpr(2)
COL_W = tl.constexpr(3)
COL_SB = tl.constexpr(4)
COL_SC = tl.constexpr(5)
COL_SH = tl.constexpr(6)
COL_SW = tl.constexpr(7)
COL_OFFSET = tl.constexpr(8)
NCOLS = tl.constexpr(9)


def layer_table(feats, offsets=None) -> torch.Tensor:
    """The int64 layer table (M × NCOLS) of B×C×H×W features; ``offsets`` (default 0) is where each
    layer's rows start in a packed buffer (see :func:`packed_offsets`)."""
    offsets = offsets or [0] * len(feats)
    rows = [[f.data_ptr(), *f.shape[1:], *f.stride(), off] for f, off in zip(feats, offsets)]
    return torch.tensor(rows, dtype=torch.int64).to(feats[0].device, non_blocking=True)


def pointer_table(tensors) -> torch.Tensor:
    """int64 data pointers, one per tensor: per-layer inputs or outputs of other shapes."""
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64).to(
        tensors[0].device, non_blocking=True)


def packed_offsets(sizes):
    """Start of each layer's block in a buffer packing blocks of ``sizes`` elements, and the total."""
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += size
    return offsets, total


def empty_like_each(feats):
    """One uninitialised gradient per feature, with its strides (channels_last stays channels_last)."""
    return [torch.empty_like(f) for f in feats]


def sample_block(feats, cap: int) -> int:
    """A power-of-two block over one sample's C·H·W elements, at most ``cap``."""
    return min(triton.next_power_of_2(max(f[0].numel() for f in feats)), cap)


def channel_spatial_blocks(feats, tile: int):
    """(BLOCK_C, BLOCK_HW) of a tile of at most ``tile`` elements: up to 256 spatial positions, then
    as many channels as fit."""
    block_hw = min(triton.next_power_of_2(max(f.shape[2] * f.shape[3] for f in feats)), 256)
    block_c = min(triton.next_power_of_2(max(f.shape[1] for f in feats)), max(tile // block_hw, 1))
    return block_c, block_hw


@triton.jit
def layer_geometry(table, m):
    """(C, H, W, sb, sc, sh, sw, offset) of layer m."""
    row = table + m * NCOLS
    return (tl.load(row + COL_C), tl.load(row + COL_H), tl.load(row + COL_W), tl.load(row + COL_SB),
            tl.load(row + COL_SC), tl.load(row + COL_SH), tl.load(row + COL_SW), tl.load(row + COL_OFFSET))


@triton.jit
def sample_stride(table, m):
    return tl.load(table + m * NCOLS + COL_SB)


@triton.jit
def row_start(table, ptr_carrier, B):
    """(m, b, C, H, W, sc, sh, sw, offset, pointer to sample b of layer m) of this program's row;
    ``ptr_carrier`` is any tensor of the features' dtype, which the pointer takes."""
    pid = tl.program_id(0)
    m = pid // B
    b = pid % B
    f_ptr = tl.load(table + m * NCOLS + COL_PTR).to(tl.pointer_type(ptr_carrier.dtype.element_ty))
    C, H, W, sb, sc, sh, sw, off = layer_geometry(table, m)
    return m, b, C, H, W, sc, sh, sw, off, f_ptr + b * sb


@triton.jit
def spatial_offsets(hw, W, sh, sw):
    """Offsets of flat spatial positions ``hw`` (h·W + w) in a plane of strides (sh, sw)."""
    return (hw // W) * sh + (hw % W) * sw


@triton.jit
def element_offsets(C, H, W, sc, sh, sw, e0, BLOCK: tl.constexpr):
    """Elements e0 … e0+BLOCK−1 of one sample in NCHW order: (e, e < C·H·W, offsets in its layout)."""
    e = e0 + tl.arange(0, BLOCK)
    HW = H * W
    valid = e < C * HW
    off = (e // HW) * sc + spatial_offsets(e % HW, W, sh, sw)
    return e, valid, off
