"""Feature taps: forward hooks on named modules whose features come back from a context manager.

    with taps.capture() as feats:
        teacher(x)
    feats.values()  # one tensor per tap, in tap order

A tap point is a module name and where on the module to read: its output (``conv``, ``bn``,
``logits`` taps) or its input (``penultimate``: the input of the last Linear).
:func:`tap_points` turns a tap kind into the points of a network. A student tap keeps each feature
as is (its loss needs the autograd graph); a teacher tap keeps only the method's summary
(``keep``), computed inside the hook, so each teacher activation is freed as soon as the next layer
has consumed it.
"""
import contextlib
import difflib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

TAP_KINDS = ("conv", "bn", "penultimate", "logits")


@dataclass(frozen=True)
class TapPoint:
    """A module name and whether its output (``"output"``) or its first input (``"input"``) is read."""
    name: str
    where: str = "output"


def modules_of_type(model: nn.Module, types=(nn.Conv2d,)) -> List[str]:
    """Qualified names of every module of the given types, in registration order. With the
    default, the paper's tap points: every (hypernetised) Conv2d output."""
    return [name for name, module in model.named_modules() if isinstance(module, types)]


def batchnorm_after_convs(model: nn.Module) -> List[str]:
    """For each Conv2d, the BatchNorm2d registered right after it that normalises its channels:
    the conv's pre-activation (Heo et al.'s tap for AB). A conv without one is an error."""
    named = list(model.named_modules())
    names = []
    for i, (name, module) in enumerate(named):
        if not isinstance(module, nn.Conv2d):
            continue
        following = named[i + 1][1] if i + 1 < len(named) else None
        if not (isinstance(following, nn.BatchNorm2d) and following.num_features == module.out_channels):
            raise ValueError(f"tap bn: conv {name!r} of {type(model).__name__} is not followed by a "
                             f"BatchNorm2d of its {module.out_channels} channels; use --tap conv or --pair")
        names.append(named[i + 1][0])
    return names


def classifier_name(model: nn.Module) -> str:
    """The last Linear layer: the classifier whose input is the penultimate feature."""
    names = modules_of_type(model, (nn.Linear,))
    if not names:
        raise ValueError(f"tap: {type(model).__name__} has no nn.Linear classifier to tap")
    return names[-1]


def tap_points(model: nn.Module, kind: str) -> List[TapPoint]:
    """The tap points of ``kind`` (one of :data:`TAP_KINDS`) in ``model``."""
    if kind == "conv":
        return [TapPoint(n) for n in modules_of_type(model)]
    if kind == "bn":
        return [TapPoint(n) for n in batchnorm_after_convs(model)]
    if kind == "penultimate":
        return [TapPoint(classifier_name(model), "input")]
    if kind == "logits":
        return [TapPoint(classifier_name(model))]
    close = difflib.get_close_matches(str(kind), TAP_KINDS, n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ValueError(f"tap: unknown tap {kind!r}; valid taps are {', '.join(TAP_KINDS)}{hint}")


def resolve_modules(model: nn.Module, names: Sequence[str], role: str) -> List[nn.Module]:
    """The modules at ``names``; a missing one is reported with its path, the net's role and the
    closest existing names."""
    found = dict(model.named_modules())
    for name in names:
        if name not in found:
            close = difflib.get_close_matches(name, [n for n in found if n], n=3)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise ValueError(f"{role}: {type(model).__name__} has no module named {name!r} to tap{hint}")
    return [found[n] for n in names]


class Captured:
    """The features of one capture, filled by the hooks while the net runs."""

    def __init__(self, taps: "FeatureTaps"):
        self._taps = taps
        self.features: Dict[str, torch.Tensor] = {}
        self.shapes: Dict[str, Tuple[int, ...]] = {}

    def values(self) -> List[torch.Tensor]:
        """The features in tap order; every tapped module must have run."""
        missing = [p.name for p in self._taps.points if p.name not in self.features]
        if missing:
            raise RuntimeError(f"{self._taps.role}: tapped module {missing[0]!r} did not run during "
                               f"the capture (run the net inside `with taps.capture()`)")
        return [self.features[p.name] for p in self._taps.points]

    def shape_list(self) -> List[Tuple[int, ...]]:
        """The raw features' shapes in tap order (the teacher keeps summaries, not features)."""
        self.values()
        return [self.shapes[p.name] for p in self._taps.points]


class FeatureTaps:
    """Forward hooks on the tap ``points`` of ``model`` (names or :class:`TapPoint`); ``keep(feature,
    index of the tap)`` decides what is stored per tap (the feature itself when None). ``keep`` runs
    without autograd on the detached feature, unless ``keep_graph`` (JacobianKD differentiates the
    teacher's output w.r.t. the input). Hooks store only inside :meth:`capture`."""

    def __init__(self, model: nn.Module, points: Sequence, role: str,
                 keep: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None, keep_graph: bool = False):
        self.points = [p if isinstance(p, TapPoint) else TapPoint(p) for p in points]
        self.role = role
        self._keep, self._keep_graph = keep, keep_graph
        self._sink: Optional[Captured] = None
        modules = resolve_modules(model, [p.name for p in self.points], role)
        self._handles = [self._register(module, index) for index, module in enumerate(modules)]

    @property
    def names(self) -> List[str]:
        return [p.name for p in self.points]

    def _register(self, module: nn.Module, index: int):
        point = self.points[index]
        if point.where == "input":
            return module.register_forward_pre_hook(lambda _, inputs: self._store(index, inputs[0]))
        return module.register_forward_hook(lambda _, inputs, output: self._store(index, output))

    def _store(self, index: int, feature) -> None:
        if self._sink is None:
            return
        name = self.points[index].name
        if not isinstance(feature, torch.Tensor):
            raise TypeError(f"{self.role}: module {name!r} gave {type(feature).__name__}, expected a tensor to tap")
        self._sink.shapes[name] = tuple(feature.shape)
        if self._keep is None:
            self._sink.features[name] = feature
        elif self._keep_graph:
            self._sink.features[name] = self._keep(feature, index)
        else:
            with torch.no_grad():
                self._sink.features[name] = self._keep(feature.detach(), index)

    @contextlib.contextmanager
    def capture(self) -> Iterator[Captured]:
        """Collects the taps' features of the forward passes run inside the block."""
        if self._sink is not None:
            raise RuntimeError(f"{self.role}: taps are already capturing (nested capture)")
        self._sink = Captured(self)
        try:
            yield self._sink
        finally:
            self._sink = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
