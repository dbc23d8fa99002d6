"""MobileNetV2 for CIFAR: the ImageNet network with the stem and second stage at stride 1.

Module nesting (``features.<i>.conv.<j>``, ``classifier.1``) follows the pytorch-cifar-models hub.
"""
from functools import partial

import torch
from torch import nn

from hyperkd.models.init import torchvision_init

# (expansion t, output channels c, repeats n, first stride s) per stage; the CIFAR variant keeps
# full resolution in the stem and stage 2, where the ImageNet one downsamples.
STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without losing more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU(nn.Sequential):
    """Conv (no bias), batch norm and ReLU6, padded to keep the size at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = out_channels


class InvertedResidual(nn.Module):
    """Expand (1×1), filter (depthwise 3×3), project (linear 1×1); residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        self.stride = stride
        hidden = int(round(in_channels * expand_ratio))
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expand = [ConvBNReLU(in_channels, hidden, kernel_size=1)] if expand_ratio != 1 else []
        self.conv = nn.Sequential(
            *expand,
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 whose channel counts are scaled by ``width_mult`` (rounded to multiples of 8)."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 100):
        super().__init__()
        in_channels = make_divisible(STEM_CHANNELS * width_mult)
        self.last_channel = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        features = [ConvBNReLU(3, in_channels, stride=1)]
        for expand_ratio, channels, repeats, stride in STAGES:
            out_channels = make_divisible(channels * width_mult)
            for index in range(repeats):
                features.append(InvertedResidual(in_channels, out_channels,
                                                 stride if index == 0 else 1, expand_ratio))
                in_channels = out_channels
        features.append(ConvBNReLU(in_channels, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))
        torchvision_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


MODELS = {
    f"mobilenetv2_x{str(width).replace('.', '_')}": partial(MobileNetV2, width)
    for width in (0.5, 0.75, 1.0, 1.4)
}
