"""Feature taps: forward hooks on the same qualified module names in student and teacher.

The student tap keeps each output as is (the loss needs its autograd graph). The teacher tap
keeps only the method's summary (``method.summarise``), computed inside the hook, so each teacher
activation can be freed as soon as the next layer has consumed it.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn


def modules_of_type(model: nn.Module, types=(nn.Conv2d,)) -> List[str]:
    """Qualified names of every module of the given types, in registration order. With the
    default, the paper's tap points: every (hypernetised) Conv2d output."""
    return [name for name, module in model.named_modules() if isinstance(module, types)]


def resolve_modules(model: nn.Module, names: Sequence[str], role: str) -> List[nn.Module]:
    """The modules at ``names``; a missing one is reported with its path and the net's role."""
    found = dict(model.named_modules())
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"{role}: no module named {missing[0]!r} to tap"
                         f" ({len(missing)} missing: {missing})")
    return [found[n] for n in names]


class FeatureTaps:
    """Forward hooks on ``names`` of ``model``; ``keep(output, index of the tap)`` decides what is
    stored per layer (the output itself when ``keep`` is None). ``keep`` runs without autograd on the
    detached output, unless ``keep_graph`` (JacobianKD differentiates the output w.r.t. the input).

    ``features[name]`` holds what ``keep`` returned for the last forward, ``shapes[name]`` the raw
    output's shape (checked against the other net's). :meth:`clear` drops them after the loss.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], role: str,
                 keep: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None, keep_graph: bool = False):
        self.names, self.role = list(names), role
        self.features: Dict[str, torch.Tensor] = {}
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self._keep, self._keep_graph = keep, keep_graph
        self._handles = [module.register_forward_hook(self._hook(name))
                         for name, module in zip(self.names, resolve_modules(model, self.names, role))]

    def _hook(self, name):
        index = self.names.index(name)

        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"{self.role}: module {name!r} returned {type(output).__name__}, "
                                f"expected a tensor to tap")
            self.shapes[name] = tuple(output.shape)
            if self._keep is None:
                self.features[name] = output
            elif self._keep_graph:
                self.features[name] = self._keep(output, index)
            else:
                with torch.no_grad():
                    self.features[name] = self._keep(output.detach(), index)
        return hook

    def collected(self) -> List[torch.Tensor]:
        """The stored features in tap order; every tapped module must have run."""
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise RuntimeError(f"{self.role}: tapped module {missing[0]!r} did not run in the last "
                               f"forward (run both nets before computing the KD loss)")
        return [self.features[n] for n in self.names]

    def clear(self) -> None:
        self.features.clear()
        self.shapes.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
