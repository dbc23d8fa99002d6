"""The GTN supernet: a weight-sharing pool of the student architectures of
:mod:`hyperkd.models.nas` (GTN supplementary §1).

Each of the six reconfigurable layers holds all its candidate operations and runs one, the
*active* one. ``Supernet.sample()`` draws a path from the per-layer distribution (uniform unless
``probs`` is set), ``Supernet.activate(spec)`` sets one, and ``Supernet.extract(spec)`` builds the
standalone student. Only the active operation of each layer runs, so only it receives gradients.
"""
import random
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from hyperkd.models.nas import (PRESETS, NasNet, Spec, SupernetConfig, ClassifierHead, LayerNet, check_spec,
                                conv_layer, init_weights, make_op,
                                spec_name)


class ChoiceLayer(nn.Module):
    """A reconfigurable layer: its candidates by name, and the one that runs (``active``)."""

    def __init__(self, names: Sequence[str], c_in: int, c_out: int, stride: int, zero: str):
        super().__init__()
        self.candidates = nn.ModuleDict({n: make_op(n, c_in, c_out, stride, zero) for n in names})
        self.active = names[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.candidates[self.active](x)


class Supernet(LayerNet):
    """Six :class:`ChoiceLayer` s sharing stem and head; ``probs`` is the per-layer path
    distribution (uniform unless set)."""

    def __init__(self, config: SupernetConfig = SupernetConfig(), num_classes: int = 100):
        super().__init__()
        self.config, self.num_classes = config, num_classes
        self.stem = conv_layer(3, config.scaled(config.stem))
        self.layers = nn.Sequential(*(ChoiceLayer(config.candidates(i), *shape, config.zero)
                                      for i, shape in enumerate(config.layer_shapes())))
        self.head = ClassifierHead(config.layer_shapes()[-1][1], config.scaled(config.mix), num_classes)
        self.probs = [None] * len(self.layers)
        init_weights(self)

    def candidates(self) -> List[Tuple[str, ...]]:
        return [tuple(layer.candidates) for layer in self.layers]

    def sample(self, generator: Optional[random.Random] = None,
               probs: Optional[Sequence[Optional[Sequence[float]]]] = None) -> Spec:
        """One operation per layer from the per-layer distribution ``probs`` (default: ``self.probs``;
        uniform where a layer's entry is None); activates and returns the spec."""
        rng = generator or random
        weights = self.probs if probs is None else probs
        if len(weights) != len(self.layers):
            raise ValueError(f"probs: expected one entry per layer ({len(self.layers)}), got {len(weights)}")
        spec = tuple(rng.choices(names, weights=p)[0] if p is not None else rng.choice(names)
                     for names, p in zip(self.candidates(), weights))
        self.activate(spec)
        return spec

    def activate(self, spec: Spec) -> None:
        for layer, op in zip(self.layers, check_spec(spec, self.config)):
            layer.active = op

    @property
    def active(self) -> Spec:
        return tuple(layer.active for layer in self.layers)

    def extract(self, spec: Spec, weights: bool = True) -> NasNet:
        """The standalone student of ``spec``; with ``weights`` it starts from the supernet's."""
        net = NasNet(spec, self.config, self.num_classes)
        if weights:
            net.stem.load_state_dict(self.stem.state_dict())
            for mine, layer, op in zip(net.layers, self.layers, net.spec):
                mine.load_state_dict(layer.candidates[op].state_dict())
            net.head.load_state_dict(self.head.state_dict())
        return net


def sample_students(count: int, preset: str = "small", seed: int = 0) -> List[str]:
    """``count`` distinct random paths of the preset's supernet, as model names."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    config = PRESETS[preset]
    rng, names = random.Random(seed), []
    candidates = [config.candidates(i) for i in range(len(config.widths))]
    space = 1
    for c in candidates:
        space *= len(c)
    if count > space:
        raise ValueError(f"random: asked for {count} students, the supernet has {space} paths")
    while len(names) < count:
        name = spec_name(tuple(rng.choice(c) for c in candidates), preset)
        if name not in names:
            names.append(name)
    return names
