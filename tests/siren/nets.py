"""Tiny CNNs and predictors with known outputs for the SIREN tests."""
import torch
from torch import nn

from hyperkd.siren import KernelLayout


class TinyNet(nn.Module):
    """3×3 and 1×1 convs, BatchNorm and a classifier: every case of the crop/scatter plan."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(4, 5, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x) + self.shortcut(x)))
        return self.fc(x.mean(dim=(2, 3)))


def lookup_tables(layout: KernelLayout, coords: torch.Tensor, kernels: torch.Tensor):
    """Decode-op weights that output ``kernels[n]`` exactly at ``coords[n]`` (ReLU, no hidden layer).

    Unit n of the first layer fires (value 1) only where all three indices match kernel n's
    coordinate: each matching table entry adds 1, T_ℓ carries the bias −2, and ReLU(3 − 2) = 1
    while any mismatch gives at most ReLU(2 − 2) = 0. The output layer's column n is kernel n.
    """
    n = coords.shape[0]
    layers, filters, channels = layout.grid
    tables = []
    for axis, rows in enumerate((layers, filters, channels)):
        t = torch.full((rows, n), -8.0, dtype=kernels.dtype)
        t[coords[:, axis], torch.arange(n)] = 1.0
        tables.append(t)
    tables[0] = tables[0] - 2.0
    hidden_w = torch.zeros(0, n, n, dtype=kernels.dtype)
    hidden_b = torch.zeros(0, n, dtype=kernels.dtype)
    return (*tables, hidden_w, hidden_b, kernels.T.contiguous(), torch.zeros(kernels.shape[1], dtype=kernels.dtype))
