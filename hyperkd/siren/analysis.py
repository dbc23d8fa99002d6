"""Analyses of reconstructed weights (paper §3.1, App. E–F).

- S_ratio of a layer (§3.1): reshape its weight to M (out × in·k·k), σ its singular values in
  decreasing order, k = min(n, m); S_ratio = Σ_{i ≤ ⌊k/2⌋} σ_i² / Σ_i σ_i², the energy share of the
  first half of the spectrum (higher = more low-frequency dominated).
- Interpolation (App. F): accuracy and distance of f((1 − α)·w_o + α·w̄) for α in [0, 1].
"""
from pathlib import Path
from typing import List, Sequence

import torch
from torch import nn

from hyperkd import runtime

from hyperkd.siren.phases import distance, interpolate


def s_ratio(weight: torch.Tensor) -> float:
    """S_ratio of one layer's weight (any shape with the output channels first)."""
    sigma = torch.linalg.svdvals(weight.detach().reshape(weight.shape[0], -1).double())
    energy = sigma.square()
    return float(energy[: len(sigma) // 2].sum() / energy.sum().clamp_min(1e-300))


def s_ratios(net: nn.Module) -> List[tuple]:
    """(conv name, S_ratio) for every conv of ``net`` with at least two singular values."""
    return [(name, s_ratio(m.weight)) for name, m in net.named_modules()
            if isinstance(m, nn.Conv2d) and min(m.weight.shape[0], m.weight[0].numel()) > 1]


def accuracy(net: nn.Module, loader) -> float:
    """Top-1 accuracy of ``net`` (evaluated where its weights live)."""
    return runtime.accuracy(net.eval(), loader, next(net.parameters()).device)


def interpolation_curve(original: nn.Module, reconstructed: nn.Module, loader,
                        alphas: Sequence[float] = tuple(i / 10 for i in range(11))) -> List[dict]:
    """[{alpha, distance to w_o (RMS over conv weights), accuracy on loader}] along the segment."""
    curve = []
    for alpha in alphas:
        net = interpolate(original, reconstructed, alpha)
        curve.append({"alpha": alpha, "distance": distance(original, net),
                      "accuracy": accuracy(net, loader)})
    return curve


def plot_s_ratios(original: nn.Module, reconstructed: nn.Module, path) -> Path:
    """Per-layer S_ratio of the original and reconstructed weights (the paper's Fig. 2/8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = s_ratios(original), s_ratios(reconstructed)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([r for _, r in a], "o-", label="original")
    ax.plot([r for _, r in b], "s-", label="reconstructed")
    ax.set_xlabel("conv layer")
    ax.set_ylabel("S_ratio")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_interpolation(curve: List[dict], path) -> Path:
    """Distance (left axis) and accuracy (right axis) against α (the paper's Fig. 9)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [c["alpha"] for c in curve]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(alphas, [c["distance"] for c in curve], "o-", color="tab:blue")
    ax.set_xlabel("α")
    ax.set_ylabel("RMS distance to original", color="tab:blue")
    right = ax.twinx()
    right.plot(alphas, [c["accuracy"] for c in curve], "s-", color="tab:red")
    right.set_ylabel("accuracy", color="tab:red")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
