"""The zoo: names, forward passes, published parameter counts and a state_dict key snapshot.

Regenerate the snapshot after an intended change with
``PYTHONPATH=. python tests/models/test_zoo.py``.
"""
import json
from pathlib import Path

import pytest
import torch

from hyperkd import models

SNAPSHOT = Path(__file__).parent / "fixtures" / "state_dict_layout.json"

# Millions of parameters with 100 classes, as published by the pytorch-cifar-models hub.
PUBLISHED_PARAMS_M = {
    "resnet20": 0.28, "resnet32": 0.47, "resnet44": 0.67, "resnet56": 0.86,
    "vgg11_bn": 9.80, "vgg13_bn": 9.99, "vgg16_bn": 15.30, "vgg19_bn": 20.61,
    "mobilenetv2_x0_5": 0.82, "mobilenetv2_x0_75": 1.48, "mobilenetv2_x1_0": 2.35,
    "mobilenetv2_x1_4": 4.50,
    "shufflenetv2_x0_5": 0.44, "shufflenetv2_x1_0": 1.36, "shufflenetv2_x1_5": 2.58,
    "shufflenetv2_x2_0": 5.55,
    "repvgg_a0": 7.96, "repvgg_a1": 12.94, "repvgg_a2": 26.94,
}


def layout(name: str) -> dict:
    """state_dict key -> shape of ``name`` with 100 classes, built without allocating memory."""
    with torch.device("meta"):
        state_dict = models.create(name).state_dict()
    return {key: list(tensor.shape) for key, tensor in state_dict.items()}


def test_available_lists_the_19_hub_models_in_table_order_then_the_extras():
    assert models.HUB == tuple(PUBLISHED_PARAMS_M)
    assert models.available() == models.HUB + models.EXTRAS
    assert models.EXTRAS[0] == "vgg11_bn_x0_25"


def test_quarter_width_vgg11_keeps_the_vgg11_layout_at_a_quarter_of_the_channels():
    small, full = models.create("vgg11_bn_x0_25", num_classes=10), models.create("vgg11_bn", num_classes=10)
    convs = lambda net: [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels * 4 for c in convs(small)] == [c.out_channels for c in convs(full)]
    assert small.classifier[0].in_features == 128
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS_M))
def test_model_runs_at_batch_2_and_has_the_published_size(name):
    model = models.create(name).eval()
    assert round(models.parameter_count(model) / 1e6, 2) == PUBLISHED_PARAMS_M[name]
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100)
    assert torch.isfinite(logits).all()
    assert not torch.equal(logits[0], logits[1])


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS_M))
def test_state_dict_keys_and_shapes_match_the_snapshot(name):
    assert layout(name) == json.loads(SNAPSHOT.read_text())[name]


def test_snapshot_covers_exactly_the_hub_models():
    assert tuple(json.loads(SNAPSHOT.read_text())) == models.HUB


@pytest.mark.parametrize("name, classifier", [("resnet20", "fc"), ("vgg11_bn", "classifier.6"),
                                              ("mobilenetv2_x0_5", "classifier.1"),
                                              ("shufflenetv2_x0_5", "fc"), ("repvgg_a0", "linear")])
def test_num_classes_sizes_only_the_classifier(name, classifier):
    small, large = layout(name), None
    with torch.device("meta"):
        large = models.create(name, num_classes=10).state_dict()
    differing = {key for key in small if list(large[key].shape) != small[key]}
    assert differing == {f"{classifier}.weight", f"{classifier}.bias"}
    assert large[f"{classifier}.weight"].shape[0] == 10


def test_names_are_case_insensitive():
    assert models.parameter_count(models.create("ResNet20")) == 278_324


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnet22'.*resnet20"):
        models.create("resnet22")
    with pytest.raises(ValueError, match=r"did you mean .*mobilenetv2_x1_0"):
        models.create("mobilenet_v2_x1_0")


def test_unknown_name_without_close_match_lists_the_zoo():
    with pytest.raises(ValueError, match=r"available: resnet20, .*repvgg_a2"):
        models.create("transformer")


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_num_classes_must_be_a_positive_integer(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        models.create("resnet20", num_classes=num_classes)


def _write_snapshot() -> None:
    entries = []
    for name in models.HUB:
        lines = [f"    {json.dumps(key)}: {json.dumps(shape)}"
                 for key, shape in layout(name).items()]
        entries.append(f"  {json.dumps(name)}: {{\n" + ",\n".join(lines) + "\n  }")
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text("{\n" + ",\n".join(entries) + "\n}\n")


if __name__ == "__main__":
    _write_snapshot()
