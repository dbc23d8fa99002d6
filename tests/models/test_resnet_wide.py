"""CIFAR ResNet-18/10 (four stages at 64–512 channels) and their quarter-width variants."""
import pytest
import torch

from hyperkd import models

# Parameters with 10 classes: the widely quoted 11.17M of CIFAR ResNet-18 (kuangliu/pytorch-cifar).
PARAMS_10_CLASSES = {"resnet18": 11_173_962, "resnet10": 4_903_242,
                     "resnet18_x0_25": 701_466, "resnet10_x0_25": 308_826}


def convs(net):
    return [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]


def test_listed_as_extras_not_as_hub_models():
    for name in PARAMS_10_CLASSES:
        assert name in models.EXTRAS and name not in models.HUB


@pytest.mark.parametrize("name", list(PARAMS_10_CLASSES))
def test_parameter_count(name):
    with torch.device("meta"):
        net = models.create(name, num_classes=10)
    assert models.parameter_count(net) == PARAMS_10_CLASSES[name]


@pytest.mark.parametrize("name, blocks", [("resnet18", 2), ("resnet10", 1)])
def test_stages_have_the_paper_layout(name, blocks):
    with torch.device("meta"):
        net = models.create(name, num_classes=10)
    stem = net.conv1
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((3, 3), (1, 1), 64)
    for k, width in enumerate((64, 128, 256, 512)):
        stage = getattr(net, f"layer{k + 1}")
        assert len(stage) == blocks
        assert stage[0].conv1.out_channels == width
        assert stage[0].conv1.stride == ((1, 1) if k == 0 else (2, 2))
    # ResNet-18: stem + 8 blocks × 2 convs + 3 projection shortcuts.
    assert len(convs(net)) == 1 + 2 * 4 * blocks + 3


def test_quarter_width_keeps_the_layout():
    small, full = models.create("resnet10_x0_25", num_classes=10), models.create("resnet10", num_classes=10)
    assert [c.out_channels * 4 for c in convs(small)] == [c.out_channels for c in convs(full)]
    logits = small(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert not torch.equal(logits[0], logits[1])
