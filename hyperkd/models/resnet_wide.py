"""CIFAR ResNet-18 and ResNet-10: four stages of basic blocks at 64/128/256/512 channels.

The ImageNet ResNets of He et al. (2016) adapted to 32×32 inputs the usual way: a 3×3 stride-1
stem without max-pooling, stages 2–4 halving the resolution. ResNet-18 has [2, 2, 2, 2] blocks and
ResNet-10 [1, 1, 1, 1] — the teacher/student pair of the layer-wise learning-rate paper. The
``_x0_25`` variants keep the layout at a quarter of the widths (16/32/64/128), small enough to
distil on a CPU. Not hub networks: no published checkpoints exist for these names.
"""
from functools import partial
from typing import Sequence

import torch
from torch import nn

from hyperkd.models.init import torchvision_init
from hyperkd.models.resnet import BasicBlock, _conv3x3

WIDTHS = (64, 128, 256, 512)


class WideCifarResNet(nn.Module):
    """A 3×3 stem, then one stage of ``blocks[k]`` basic blocks per width (strides 1, 2, 2, 2)."""

    def __init__(self, blocks: Sequence[int], num_classes: int = 100, width_scale: float = 1.0):
        super().__init__()
        widths = [max(1, int(w * width_scale)) for w in WIDTHS]
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_channels = [], widths[0]
        for k, (count, width) in enumerate(zip(blocks, widths)):
            stride = 1 if k == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_channels, width, stride),
                                        *(BasicBlock(width, width) for _ in range(count - 1))))
            in_channels = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        torchvision_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet10": (1, 1, 1, 1)}

MODELS = {
    **{name: partial(WideCifarResNet, blocks) for name, blocks in DEPTHS.items()},
    **{f"{name}_x0_25": partial(WideCifarResNet, blocks, width_scale=0.25) for name, blocks in DEPTHS.items()},
}
