"""Small primary networks for the hypernetwork tests: a VGG-style and a ResNet-style net, with a
1×1 convolution and a convolution with a bias (torchvision-free)."""
import torch
from torch import nn


def tiny_vgg(classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 10, 3, padding=1), nn.ReLU(),  # conv with a bias
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, classes))


class TinyBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.downsample(x))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = TinyBlock(4, 7, 2)
        self.fc = nn.Linear(7, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer1(x).mean((2, 3)))


NETS = {"vgg": tiny_vgg, "resnet": TinyResNet}
