"""The student architectures of the GTN supernet's pool (GTN supplementary §1, Tables 1-3).

A ConvLayer stem (3 → 16, 3×3) and an identity layer are followed by six reconfigurable layers,
then a 1×1 ConvLayer to the feature width ("mix", 1280 in the tables), global average pooling and
a Linear classifier. Each layer runs one operation: a ResNet basic-block stack with kernel 3 or 5
and 2, 4 or 6 convolutions (1-3 basic blocks, the first carrying the layer's stride and width
change), or ``identity``/``zero`` where the layer's shapes allow them (stride 1, c_in = c_out).

An architecture spec is a tuple of six operation names such as
``("k3d4", "k3d2", "k5d4", "zero", "k3d2", "k3d2")``. :class:`NasNet` builds one student;
``hyperkd.gtn.Supernet`` holds every candidate and extracts students.

``zero`` (our reading): in ProxylessNAS, whose search space the tables' layer names come from, the
zero operation sits beside the layer's identity shortcut, so choosing it skips the layer
(``zero="skip"``, the default: y = x + 0). ``zero="zeros"`` takes the supplementary's sentence
literally (y = 0); every later layer then sees a constant input.
"""
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from hyperkd.models.init import torchvision_init

Spec = Tuple[str, ...]
ZERO_MODES = ("skip", "zeros")
SHAPE_PRESERVING = ("identity", "zero")


@dataclass(frozen=True)
class SupernetConfig:
    """Widths and strides of the six reconfigurable layers and the candidate set. The defaults are
    the widths of the supplementary's tables (16 → 64, 64, 128 s2, 128, 256 s2, 512 s2; mix 1280)."""

    stem: int = 16
    widths: Tuple[int, ...] = (64, 64, 128, 128, 256, 512)
    strides: Tuple[int, ...] = (1, 1, 2, 1, 2, 2)
    mix: int = 1280
    kernels: Tuple[int, ...] = (3, 5)
    depths: Tuple[int, ...] = (2, 4, 6)
    width_mult: float = 1.0
    zero: str = "skip"

    def __post_init__(self):
        if len(self.widths) != len(self.strides) or not self.widths:
            raise ValueError(f"widths/strides: expected equal, non-empty lengths, got {self.widths} "
                             f"and {self.strides}")
        if any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides: expected 1 or 2 per layer, got {self.strides}")
        if any(d < 2 or d % 2 for d in self.depths):
            raise ValueError(f"depths: expected even numbers of convolutions >= 2, got {self.depths}")
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ValueError(f"kernels: expected odd kernel sizes, got {self.kernels}")
        if not self.width_mult > 0:
            raise ValueError(f"width_mult: expected a positive number, got {self.width_mult!r}")
        if self.zero not in ZERO_MODES:
            raise ValueError(f"zero: expected one of {ZERO_MODES}, got {self.zero!r}")

    def scaled(self, channels: int) -> int:
        """``channels`` × the width multiplier, rounded to a multiple of 4 (at least 4)."""
        return max(4, int(round(channels * self.width_mult / 4)) * 4)

    def layer_shapes(self) -> List[Tuple[int, int, int]]:
        """(c_in, c_out, stride) of each reconfigurable layer, after the width multiplier."""
        shapes, c_in = [], self.scaled(self.stem)
        for width, stride in zip(self.widths, self.strides):
            c_out = self.scaled(width)
            shapes.append((c_in, c_out, stride))
            c_in = c_out
        return shapes

    def candidates(self, layer: int) -> Tuple[str, ...]:
        """The operation names of reconfigurable layer ``layer``: the ResNet stacks, then identity
        and zero when the layer keeps its shape."""
        c_in, c_out, stride = self.layer_shapes()[layer]
        ops = tuple(f"k{k}d{d}" for k in self.kernels for d in self.depths)
        return ops + SHAPE_PRESERVING if stride == 1 and c_in == c_out else ops


PRESETS: Dict[str, SupernetConfig] = {
    "cifar": SupernetConfig(),
    # ÷4 widths: students stay smaller than a ResNet-32 teacher and train on a CPU.
    "small": SupernetConfig(width_mult=0.25),
}

# The NAS-found students of the supplementary's Tables 1-3 as specs. Table 1 (s_nas^s) has no block
# between its 256-wide layer and the 1×1 mix; in this supernet the 256 → 512 stride-2 layer cannot
# be skipped (its shapes change), so it takes the smallest stack, k3d2.
NAS_STUDENTS: Dict[str, Spec] = {
    "s_nas_s": ("k3d2", "zero", "k3d2", "zero", "k3d2", "k3d2"),
    "s_nas_m": ("k3d4", "k3d2", "k5d4", "zero", "k3d2", "k3d2"),
    "s_nas_l": ("k3d4", "k3d6", "k3d6", "k3d6", "k3d6", "k3d6"),
}


def conv_layer(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """The tables' ConvLayer: convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """A ResNet basic block with k×k convolutions: two conv-BN layers and an identity or 1×1
    projection shortcut."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(c_in, c_out, kernel, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def init_weights(net: nn.Module) -> None:
    """torchvision's initialisation, then each ResBlock's last BN scale at zero so that every block
    starts as its shortcut (Goyal et al. 2017): a path of up to 18 blocks then starts with logits
    of the scale of a shallow net's (our choice; the supplementary gives no initialisation)."""
    torchvision_init(net)
    for module in net.modules():
        if isinstance(module, ResBlock):
            nn.init.zeros_(module.bn2.weight)


class Zero(nn.Module):
    """The literal zero operation: y = 0 with the input's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def make_op(name: str, c_in: int, c_out: int, stride: int, zero: str = "skip") -> nn.Module:
    """One candidate operation by name (``k3d4``, ``identity``, ``zero``)."""
    if name in SHAPE_PRESERVING:
        if stride != 1 or c_in != c_out:
            raise ValueError(f"op {name!r} needs stride 1 and c_in = c_out, got {c_in} -> {c_out}, "
                             f"stride {stride}")
        return Zero() if name == "zero" and zero == "zeros" else nn.Identity()
    try:
        kernel, depth = (int(v) for v in name[1:].split("d"))
        if not name.startswith("k"):
            raise ValueError
    except ValueError:
        raise ValueError(f"op: expected 'k<kernel>d<convs>', 'identity' or 'zero', got {name!r}") from None
    blocks = [ResBlock(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1)
              for i in range(depth // 2)]
    return nn.Sequential(*blocks)


class ClassifierHead(nn.Module):
    """1×1 ConvLayer to the feature width, global average pooling, Linear classifier."""

    def __init__(self, c_in: int, mix: int, num_classes: int):
        super().__init__()
        self.mix = conv_layer(c_in, mix, kernel=1)
        self.fc = nn.Linear(mix, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.mix(x), 1), 1))


class LayerNet(nn.Module):
    """stem → (identity layer) → six layers → head; ``forward_from`` starts at a given layer."""

    def forward_from(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """The logits from the input of reconfigurable layer ``start`` (0..6; 6 = the head)."""
        for layer in self.layers[start:]:
            h = layer(h)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.stem(x), 0)


class NasNet(LayerNet):
    """A standalone student of the pool: the chosen operation of each layer only."""

    def __init__(self, spec: Spec, config: SupernetConfig = SupernetConfig(), num_classes: int = 100):
        super().__init__()
        spec = check_spec(spec, config)
        self.spec, self.config = spec, config
        self.stem = conv_layer(3, config.scaled(config.stem))
        self.layers = nn.Sequential(*(make_op(op, *shape, config.zero)
                                      for op, shape in zip(spec, config.layer_shapes())))
        self.head = ClassifierHead(config.layer_shapes()[-1][1], config.scaled(config.mix), num_classes)
        init_weights(self)


def check_spec(spec, config: SupernetConfig) -> Spec:
    """``spec`` as a tuple, checked against the candidates of each layer."""
    spec = tuple(spec) if isinstance(spec, (list, tuple)) else spec
    if not isinstance(spec, tuple) or len(spec) != len(config.widths):
        raise ValueError(f"spec: expected {len(config.widths)} operation names, got {spec!r}")
    for i, op in enumerate(spec):
        if op not in config.candidates(i):
            raise ValueError(f"spec: layer {i} has no operation {op!r}; candidates: "
                             f"{', '.join(config.candidates(i))}")
    return spec


# -- students by name -------------------------------------------------------------------------
# ``s_nas_s`` etc. use the tables' widths, ``s_nas_s_small`` the ÷4 preset; any path of a preset is
# named ``nas_<preset>:<op>-<op>-...`` (e.g. ``nas_small:k3d2-zero-k5d4-k3d2-k3d2-k3d4``).

def spec_name(spec: Spec, preset: str = "small") -> str:
    return f"nas_{preset}:{'-'.join(spec)}"


def is_nas_name(name: str) -> bool:
    return name.startswith("nas_") and ":" in name


def build_named(name: str, num_classes: int = 100) -> NasNet:
    """The student ``nas_<preset>:<ops>`` as a :class:`NasNet`."""
    prefix, _, ops = name.partition(":")
    preset = prefix[len("nas_"):]
    if preset not in PRESETS:
        raise ValueError(f"model {name!r}: unknown supernet preset {preset!r}; presets: {', '.join(PRESETS)}")
    return NasNet(tuple(ops.split("-")), PRESETS[preset], num_classes)


def named_students() -> Dict[str, Callable[..., NasNet]]:
    """Builders (``num_classes=`` → net) of the NAS-found students at width 1 and at the small preset."""
    return {name + suffix: partial(NasNet, spec, PRESETS[preset])
            for name, spec in NAS_STUDENTS.items()
            for suffix, preset in (("", "cifar"), ("_small", "small"))}


