"""VGG-11/13/16/19 with batch norm, sized for 32×32 inputs.

Five max-pools take 32×32 to 1×1, so the classifier sees 512 features and keeps two hidden
layers of 512. Indices inside ``features`` and ``classifier`` follow the pytorch-cifar-models hub.
"""
from functools import partial
from typing import Sequence, Union

import torch
from torch import nn

from hyperkd.models.init import torchvision_init

POOL = "M"
# Output channels of each 3×3 conv, with POOL marking a 2×2 max-pool (configurations A, B, D, E).
CONFIGS = {
    "vgg11_bn": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg13_bn": (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg16_bn": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
                 512, 512, 512, POOL, 512, 512, 512, POOL),
    "vgg19_bn": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
                 512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL),
}


def make_features(config: Sequence[Union[int, str]]) -> nn.Sequential:
    """Conv-BN-ReLU triples and max-pools, flattened into one ``Sequential`` as the hub has it."""
    layers = []
    in_channels = 3
    for item in config:
        if item == POOL:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.BatchNorm2d(item),
                       nn.ReLU(inplace=True)]
            in_channels = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG feature extractor followed by a two-hidden-layer classifier with dropout, as wide as
    the last conv (512 for the hub nets)."""

    def __init__(self, config: Sequence[Union[int, str]], num_classes: int = 100):
        super().__init__()
        self.features = make_features(config)
        width = [c for c in config if c != POOL][-1]
        self.classifier = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(True), nn.Dropout(),
            nn.Linear(width, width), nn.ReLU(True), nn.Dropout(),
            nn.Linear(width, num_classes),
        )
        torchvision_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


MODELS = {name: partial(VGG, config) for name, config in CONFIGS.items()}
# Not in the hub: VGG-11 at a quarter of the width, small enough to hypernetise and distil on a
# CPU in minutes (the digits demo). Like the hub nets it has no residual connections.
EXTRA_MODELS = {"vgg11_bn_x0_25": partial(VGG, tuple(c if c == POOL else c // 4 for c in CONFIGS["vgg11_bn"]))}
