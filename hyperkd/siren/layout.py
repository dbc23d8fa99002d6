"""Coordinates of every conv kernel of a CNN and the crop/scatter plan back into its weights.

NeRN (Ashkenazi et al., 2022; paper §2): the predictor maps a kernel's coordinate (layer ℓ,
filter f, channel c) to a K×K kernel, K the largest kernel size of the net; a k×k kernel (k < K)
takes the centre of the K×K output, so a 1×1 conv reads element (K//2, K//2). Only conv weights
are represented; BatchNorm and the classifier are copied unchanged.

Kernels are numbered layer by layer in each weight's own (out, in) order: kernel ``n`` of layer ℓ
is ``weight[n // in, n % in]``. ``coords[n]`` is the coordinate the predictor sees for kernel
``n``; a permutation (``hyperkd.siren.permutation``) only reassigns coordinates within a layer.
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn


@dataclass(frozen=True)
class ConvSlot:
    """One conv layer: its module name, weight shape and first kernel in the flat numbering."""

    name: str
    out_channels: int
    in_channels: int
    kernel_size: int
    start: int

    @property
    def count(self) -> int:
        return self.out_channels * self.in_channels

    @property
    def stop(self) -> int:
        return self.start + self.count


class KernelLayout:
    """The conv layers of ``model``, their kernel numbering and the canonical coordinates."""

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        slots, start = [], 0
        for name, module in model.named_modules():
            if not isinstance(module, nn.Conv2d):
                continue
            out_c, in_c, kh, kw = module.weight.shape
            if kh != kw:
                raise ValueError(f"model: conv {name!r} has a non-square {kh}×{kw} kernel; "
                                 "expected square kernels")
            slots.append(ConvSlot(name, out_c, in_c, kh, start))
            start += out_c * in_c
        if not slots:
            raise ValueError("model: expected a CNN with at least one nn.Conv2d, found none")
        self.slots: Tuple[ConvSlot, ...] = tuple(slots)
        self.kernel_size = max(s.kernel_size for s in slots)
        self.num_kernels = start

    @property
    def output_size(self) -> int:
        """K², the predictor's output width."""
        return self.kernel_size ** 2

    @property
    def grid(self) -> Tuple[int, int, int]:
        """Index ranges (layers, filters, channels) the coordinate encodings must cover."""
        return (len(self.slots), max(s.out_channels for s in self.slots),
                max(s.in_channels for s in self.slots))

    @property
    def represented_parameters(self) -> int:
        """Conv weight entries the predictor represents (the denominator of CR)."""
        return sum(s.count * s.kernel_size ** 2 for s in self.slots)

    def canonical_coords(self, device=None) -> torch.Tensor:
        """int64 N×3 (ℓ, f, c) of every kernel in its own position (no permutation)."""
        parts = []
        for layer, s in enumerate(self.slots):
            n = torch.arange(s.count, device=device)
            parts.append(torch.stack([torch.full_like(n, layer), n // s.in_channels,
                                      n % s.in_channels], dim=1))
        return torch.cat(parts)

    def gather_kernels(self, model: nn.Module) -> torch.Tensor:
        """The N×K² targets: each kernel zero-padded to K×K around the centre, flat."""
        K = self.kernel_size
        modules = dict(model.named_modules())
        out = []
        for s in self.slots:
            w = modules[s.name].weight.detach()
            pad = (K - s.kernel_size) // 2
            w = nn.functional.pad(w, (pad, pad, pad, pad))
            out.append(w.reshape(s.count, K * K))
        return torch.cat(out)

    def crop(self, decoded: torch.Tensor) -> List[torch.Tensor]:
        """Splits N×P² decoded kernels (P ≥ K) into each layer's out×in×k×k weight (centre crop)."""
        side = int(round(decoded.shape[-1] ** 0.5)) if decoded.dim() == 2 else 0
        if decoded.dim() != 2 or decoded.shape[0] != self.num_kernels or side * side != decoded.shape[1] \
                or side < self.kernel_size:
            raise ValueError(f"decoded: expected shape ({self.num_kernels}, P²) with P ≥ "
                             f"{self.kernel_size}, got {tuple(decoded.shape)}")
        K = side
        weights = []
        for s in self.slots:
            lo = (K - s.kernel_size) // 2
            block = decoded[s.start:s.stop].reshape(s.out_channels, s.in_channels, K, K)
            weights.append(block[:, :, lo:lo + s.kernel_size, lo:lo + s.kernel_size])
        return weights

    def scatter(self, decoded: torch.Tensor, model: nn.Module) -> None:
        """Writes decoded kernels into the conv weights of ``model`` in place (no autograd)."""
        modules = dict(model.named_modules())
        with torch.no_grad():
            for s, w in zip(self.slots, self.crop(decoded)):
                modules[s.name].weight.copy_(w)

    def layer_of(self) -> torch.Tensor:
        """int64 N: the layer index of every kernel."""
        return torch.repeat_interleave(torch.arange(len(self.slots)),
                                       torch.tensor([s.count for s in self.slots]))
