"""Smoothness permutations of NeRN (Ashkenazi et al., 2022; paper App. D.2), vectorised in torch.

Kernels have no natural order along f and c, so NeRN re-assigns coordinates inside each layer so
that neighbouring coordinates hold similar kernels: a greedy chain starts at the first kernel and
repeatedly steps to the most cosine-similar kernel not yet visited; the i-th kernel of the chain
gets the i-th coordinate.

- ``in-filter``: one chain per filter over its input channels, all filters of a layer advanced
  together (one batched step per channel), so a layer costs ``in`` steps of O(out·in·K²) work.
- ``cross-filter``: one chain over all out·in kernels of the layer, coordinate i ↦ (i // in, i % in).

Similarities are computed row by row on the fly instead of as an n×n matrix, so memory stays
O(n·K²) and everything runs on the weights' device (a GPU when the model is on one). The weights
themselves never move: only the coordinates change, so the decoded net's function is unchanged.
"""
import torch
from torch import nn

from hyperkd.siren.layout import KernelLayout

MODES = ("none", "in-filter", "cross-filter")


def _greedy_chain_ranks(vectors: torch.Tensor) -> torch.Tensor:
    """Chain position of each of the n rows of G×n×d ``vectors``, one chain per group, as G×n int64."""
    unit = nn.functional.normalize(vectors.float(), dim=-1)
    groups, n, _ = unit.shape
    rows = torch.arange(groups, device=unit.device)
    visited = torch.zeros(groups, n, dtype=torch.bool, device=unit.device)
    ranks = torch.empty(groups, n, dtype=torch.long, device=unit.device)
    current = torch.zeros(groups, dtype=torch.long, device=unit.device)
    for step in range(n):
        visited[rows, current] = True
        ranks[rows, current] = step
        if step == n - 1:
            break
        similarity = torch.einsum("gnd,gd->gn", unit, unit[rows, current])
        current = similarity.masked_fill(visited, -torch.inf).argmax(dim=1)
    return ranks


def permuted_coords(layout: KernelLayout, model: nn.Module, mode: str = "none") -> torch.Tensor:
    """int64 N×3 coordinates of every kernel of ``model`` under permutation ``mode``.

    Within each layer the coordinates are a permutation of the canonical (f, c) grid.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    coords = layout.canonical_coords()
    if mode == "none":
        return coords
    kernels = layout.gather_kernels(model)
    coords = coords.to(kernels.device)
    for s in layout.slots:
        block = kernels[s.start:s.stop]
        if mode == "in-filter":
            ranks = _greedy_chain_ranks(block.reshape(s.out_channels, s.in_channels, -1))
            coords[s.start:s.stop, 2] = ranks.reshape(-1)
        else:
            ranks = _greedy_chain_ranks(block.unsqueeze(0)).reshape(-1)
            coords[s.start:s.stop, 1] = ranks // s.in_channels
            coords[s.start:s.stop, 2] = ranks % s.in_channels
    return coords
