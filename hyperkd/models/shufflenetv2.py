"""ShuffleNetV2 for CIFAR: the ImageNet network without the stem's stride and max-pool.

Module names (``conv1``, ``stage2..4``, ``branch1/branch2``, ``conv5``, ``fc``) follow the
pytorch-cifar-models hub.
"""
from functools import partial
from typing import Sequence

import torch
from torch import nn

STAGE_REPEATS = (4, 8, 4)
# Output channels of conv1, stage2, stage3, stage4 and conv5 for each width.
STAGE_CHANNELS = {
    "shufflenetv2_x0_5": (24, 48, 96, 192, 1024),
    "shufflenetv2_x1_0": (24, 116, 232, 464, 1024),
    "shufflenetv2_x1_5": (24, 176, 352, 704, 1024),
    "shufflenetv2_x2_0": (24, 244, 488, 976, 2048),
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups so the next block mixes them."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


def _pointwise_bn_relu(in_channels: int, out_channels: int) -> list:
    return [nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class InvertedResidual(nn.Module):
    """ShuffleNetV2 unit: split (stride 1) or duplicate (stride 2), transform, concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        branch_channels = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 unit needs in_channels == out_channels, got "
                             f"{in_channels} and {out_channels}")
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(in_channels, stride), nn.BatchNorm2d(in_channels),
                *_pointwise_bn_relu(in_channels, branch_channels),
            )
        else:
            # Empty, as in the hub, so that print(model) and the module tree match it.
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            *_pointwise_bn_relu(in_channels if stride > 1 else branch_channels, branch_channels),
            _depthwise(branch_channels, stride), nn.BatchNorm2d(branch_channels),
            *_pointwise_bn_relu(branch_channels, branch_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(transformed)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 with the given ``stage_channels`` (conv1, three stages, conv5)."""

    def __init__(self, stage_channels: Sequence[int], num_classes: int = 100):
        super().__init__()
        if len(stage_channels) != 5:
            raise ValueError(f"stage_channels needs 5 entries, got {len(stage_channels)}")
        stem, *stages, last = stage_channels
        self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                   nn.ReLU(inplace=True))
        in_channels = stem
        for index, (repeats, channels) in enumerate(zip(STAGE_REPEATS, stages), start=2):
            units = [InvertedResidual(in_channels, channels, 2)]
            units += [InvertedResidual(channels, channels, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{index}", nn.Sequential(*units))
            in_channels = channels
        self.conv5 = nn.Sequential(*_pointwise_bn_relu(in_channels, last))
        self.fc = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.conv1(x))))
        return self.fc(self.conv5(x).mean((2, 3)))


MODELS = {name: partial(ShuffleNetV2, channels) for name, channels in STAGE_CHANNELS.items()}
