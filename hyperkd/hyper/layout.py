"""Which primary-network tensors the hypernetwork generates, and where each sits in θ (Eq. 3).

A :class:`LayoutPlan` assigns every generated tensor a slice [p, q) of the flat buffer
θ = W·z + θ0 (LayerKD-HN Eq. 2–3), in a fixed order. The buffer is always in logical
(contiguous, row-major) order so that W and θ0 do not depend on the memory format; the memory
format only decides how the generation op writes each layer's kernel.
"""
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

MEMORY_FORMATS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class LayoutEntry:
    """One generated tensor: ``module_path.param`` of ``shape`` at θ[offset : offset + numel]."""

    module_path: str
    param: str
    shape: tuple
    offset: int
    memory_format: str = "contiguous"

    @property
    def name(self) -> str:
        return f"{self.module_path}.{self.param}" if self.module_path else self.param

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def find_modules(model: nn.Module, types: Sequence[type] = (nn.Conv2d,)) -> list:
    """Paths of every submodule of ``model`` that is an instance of one of ``types``, in order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    types = tuple(types)
    if not types or not all(isinstance(t, type) for t in types):
        raise TypeError(f"types: expected a non-empty sequence of module classes, got {types!r}")
    return [path for path, mod in model.named_modules() if isinstance(mod, types)]


class LayoutPlan:
    """The ordered list of generated tensors and their offsets in θ; ``total`` is P."""

    def __init__(self, entries: Iterable[LayoutEntry]):
        self.entries = tuple(entries)
        if not self.entries:
            raise ValueError("entries: expected at least one tensor to generate")
        offset = 0
        for e in self.entries:
            if e.offset != offset:
                raise ValueError(f"entries: {e.name} starts at {e.offset}, expected {offset} (entries "
                                 "must tile θ in order)")
            if not 1 <= len(e.shape) <= 4:
                raise ValueError(f"entries: {e.name} has shape {e.shape}; only 1-D to 4-D tensors "
                                 "can be generated")
            if e.memory_format not in MEMORY_FORMATS:
                raise ValueError(f"memory_format of {e.name}: expected one of {MEMORY_FORMATS}, "
                                 f"got {e.memory_format!r}")
            if e.memory_format == "channels_last" and len(e.shape) != 4:
                raise ValueError(f"memory_format of {e.name}: channels_last needs a 4-D tensor, "
                                 f"got shape {e.shape}")
            offset += e.numel
        self.total = offset

    @classmethod
    def from_modules(cls, model: nn.Module, modules: Sequence[str],
                     memory_format: str = "contiguous", include_bias: bool = True) -> "LayoutPlan":
        """Every ``weight`` (and ``bias`` when present) of the modules at the paths ``modules``.

        ``memory_format="channels_last"`` applies to the 4-D weights; biases stay 1-D.
        """
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format: expected one of {MEMORY_FORMATS}, got {memory_format!r}")
        named = dict(model.named_modules())
        if len(modules) == 0:
            raise ValueError("modules: no module to hypernetise (the model has no matching modules)")
        entries, offset = [], 0
        for path in modules:
            if path not in named:
                raise ValueError(f"modules: {path!r} is not a submodule of the model")
            mod = named[path]
            for pname in ("weight", "bias") if include_bias else ("weight",):
                p = getattr(mod, pname, None)
                if not isinstance(p, torch.Tensor):
                    if pname == "weight":
                        raise ValueError(f"modules: {path!r} has no weight tensor to generate")
                    continue
                fmt = memory_format if p.dim() == 4 else "contiguous"
                entries.append(LayoutEntry(path, pname, tuple(p.shape), offset, fmt))
                offset += p.numel()
        return cls(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    @property
    def names(self) -> list:
        return [e.name for e in self.entries]

    @property
    def numels(self) -> list:
        return [e.numel for e in self.entries]

    def check(self, model: nn.Module) -> None:
        """Raises ValueError when ``model`` no longer has a tensor of each planned name and shape."""
        params = dict(model.named_parameters())
        params.update(model.named_buffers())
        for e in self.entries:
            if e.name not in params:
                raise ValueError(f"plan: {e.name} is planned but the model has no such tensor "
                                 "(the LayoutPlan no longer matches the model)")
            if tuple(params[e.name].shape) != e.shape:
                raise ValueError(f"plan: {e.name} is planned with shape {e.shape} but the model's is "
                                 f"{tuple(params[e.name].shape)} (the LayoutPlan no longer matches "
                                 "the model)")

    def gather(self, model: nn.Module) -> torch.Tensor:
        """The model's current values of the planned tensors, flattened into one P-vector."""
        self.check(model)
        params = dict(model.named_parameters())
        return torch.cat([params[e.name].detach().reshape(-1).float() for e in self.entries])

    def __repr__(self) -> str:
        return f"LayoutPlan({len(self.entries)} tensors, P={self.total})"
