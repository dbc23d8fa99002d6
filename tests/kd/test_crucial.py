"""Crucial-layer discovery: channel-changing convs that match in shape between the nets."""
import pytest
import torch

from hyperkd import models
from hyperkd.kd.crucial import channel_changes, crucial_layers


def meta(name):
    with torch.device("meta"):
        return models.create(name, num_classes=10)


def test_resnet18_to_resnet10_gives_the_papers_four_layers():
    expected = ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    assert crucial_layers(meta("resnet10"), meta("resnet18")) == list(zip(expected, expected))


def test_projection_shortcuts_do_not_count_twice():
    assert channel_changes(meta("resnet18")) == ["conv1", "layer2.0.conv1", "layer3.0.conv1",
                                                 "layer4.0.conv1"]


def test_any_zoo_pair_in_depth_order():
    assert crucial_layers(meta("resnet20"), meta("resnet56")) == [
        ("conv1", "conv1"), ("layer2.0.conv1", "layer2.0.conv1"), ("layer3.0.conv1", "layer3.0.conv1")]


def test_no_match_is_a_clear_error():
    with pytest.raises(ValueError, match="no channel-changing conv of the student matches"):
        crucial_layers(meta("resnet20"), meta("resnet18"))


def test_pairs_by_name():
    pairs = crucial_layers(meta("resnet10"), meta("resnet18"), pairs=["layer3.0.conv1 = layer3.0.conv1"])
    assert pairs == [("layer3.0.conv1", "layer3.0.conv1")]


@pytest.mark.parametrize("pair, message", [
    ("conv1", "expected 'student.name=teacher.name'"),
    ("nope=conv1", "student has no module named 'nope'"),
    ("bn1=bn1", "student module 'bn1' is a BatchNorm2d, expected a Conv2d"),
    ("conv1=layer2.0.conv1", "pairs weights of shapes"),
])
def test_bad_pairs_are_named(pair, message):
    with pytest.raises(ValueError, match=message):
        crucial_layers(meta("resnet10"), meta("resnet18"), pairs=[pair])
