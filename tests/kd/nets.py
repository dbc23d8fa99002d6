"""Tiny same-architecture conv nets for the tap and LayerKD tests."""
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width=6, depth=3, classes=5):
        super().__init__()
        layers, c = [], 3
        for i in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def nets(seed=0, **kwargs):
    torch.manual_seed(seed)
    student, teacher = TinyNet(**kwargs), TinyNet(**kwargs)
    teacher.eval()
    return student, teacher
