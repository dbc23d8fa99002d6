"""The layer-wise learning-rate rule against hand-computed values, its parameter groups, its
composition with an outer schedule, and exact resume."""
import math

import pytest
import torch
from torch import nn

from hyperkd.train.layer_lr import SHARED, LayerLR, ema_inverse, relative
from hyperkd.train.optim import lr_schedule, sgd
from tests.train.conftest import tiny_digits  # noqa: F401  (the fixture: a few dozen digits)

# Per epoch, per step: the divergences of layers "0" and "2".
DIVERGENCES = [
    [{"0": 0.2, "2": 0.1}, {"0": 0.4, "2": 0.1}],  # epoch means 0.3, 0.1
    [{"0": 0.5, "2": 0.3}],                        # 0.5, 0.3
    [{"0": 0.2, "2": 0.4}],
    [{"0": 0.2, "2": 0.4}],
]
# every = 2, η₀ = 0.1, λ = 0.5, μ = 0.9. After epoch 1: L̄ = (0.4, 0.2), m starts at L̄, so
# η = 0.9·0.1 + 0.1·0.1/m = (0.115, 0.14). After epoch 3: L̄ = (0.2, 0.4), m = (0.3, 0.3),
# η = 0.9·η + 0.1·0.1/0.3.
AFTER_1 = {"0": 0.115, "2": 0.14}
AFTER_3 = {"0": 0.9 * 0.115 + 0.01 / 0.3, "2": 0.9 * 0.14 + 0.01 / 0.3}


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.Flatten(), nn.LazyLinear(2))


def setup(schedule="multistep", every=2, **options):
    layer_lr = LayerLR(every=every, lam=0.5, mu=0.9, **options)
    model = net()
    model(torch.zeros(1, 3, 6, 6))
    optimizer = sgd(layer_lr.param_groups(model, ["0", "2"], lr=0.1), lr=0.1)
    scheduler = lr_schedule(optimizer, schedule, epochs=4, milestones=(0.75,))
    return layer_lr, optimizer, scheduler


def run_epoch(layer_lr, optimizer, scheduler, epoch):
    for step in DIVERGENCES[epoch]:
        layer_lr.observe({j: torch.tensor(v) for j, v in step.items()})
    optimizer.step()  # no gradients: a no-op, in the order the schedulers expect
    scheduler.step()
    return layer_lr.end_epoch(epoch, optimizer, scheduler)


def lrs(optimizer):
    return {g["name"]: g["lr"] for g in optimizer.param_groups}


def test_groups_one_per_crucial_layer_and_a_shared_one():
    layer_lr, optimizer, _ = setup()
    assert [g["name"] for g in optimizer.param_groups] == [SHARED, "0", "2"]
    assert [len(g["params"]) for g in optimizer.param_groups[1:]] == [2, 2]  # weight and bias
    assert len({id(p) for g in optimizer.param_groups for p in g["params"]}) == \
        sum(len(g["params"]) for g in optimizer.param_groups)


def test_rule_matches_hand_computed_values_and_composes_with_multistep():
    layer_lr, optimizer, scheduler = setup()
    record = run_epoch(layer_lr, optimizer, scheduler, 0)
    assert record["layer_divergence"] == pytest.approx({"0": 0.3, "2": 0.1})
    assert record["layer_lr"] == {"0": 0.1, "2": 0.1}
    record = run_epoch(layer_lr, optimizer, scheduler, 1)
    assert record["layer_lr"] == pytest.approx(AFTER_1)
    assert lrs(optimizer) == pytest.approx({**AFTER_1, SHARED: 0.1})
    run_epoch(layer_lr, optimizer, scheduler, 2)  # the milestone (epoch 3) multiplies every group
    assert lrs(optimizer) == pytest.approx({"0": 0.0115, "2": 0.014, SHARED: 0.01})
    record = run_epoch(layer_lr, optimizer, scheduler, 3)
    assert record["layer_lr"] == pytest.approx(AFTER_3)
    assert lrs(optimizer) == pytest.approx({j: 0.1 * r for j, r in AFTER_3.items()} | {SHARED: 0.01})
    assert scheduler.base_lrs == pytest.approx([0.1, AFTER_3["0"], AFTER_3["2"]])


def test_cosine_schedule_multiplies_the_new_rates():
    layer_lr, optimizer, scheduler = setup("cosine")
    for epoch in range(3):
        run_epoch(layer_lr, optimizer, scheduler, epoch)
    cosine = (1 + math.cos(math.pi * 3 / 4)) / 2
    assert lrs(optimizer) == pytest.approx({j: r * cosine for j, r in AFTER_1.items()} | {SHARED: 0.1 * cosine})


def test_relative_rule_keeps_the_scale():
    rates, m = relative({"a": 1.0, "b": 1.0}, {}, {"a": 0.1, "b": 0.3}, 1.0, lam=0.5, mu=0.0, eps=0.0)
    assert rates == pytest.approx({"a": 2.0, "b": 2 / 3}) and m == {"a": 0.1, "b": 0.3}
    rates, _ = ema_inverse({"a": 1.0}, {"a": 0.5}, {"a": 0.1}, 1.0, lam=0.5, mu=0.5, eps=0.0)
    assert rates == pytest.approx({"a": 0.5 + 0.5 / 0.3})


def test_max_scale_caps_the_rates():
    layer_lr, optimizer, scheduler = setup(max_scale=1.2)
    for epoch in range(2):
        record = run_epoch(layer_lr, optimizer, scheduler, epoch)
    assert record["layer_lr"] == pytest.approx({"0": 0.115, "2": 0.12})


def test_state_dict_resumes_exactly_mid_interval():
    first, optimizer, scheduler = setup()
    run_epoch(first, optimizer, scheduler, 0)
    run_epoch(first, optimizer, scheduler, 1)
    run_epoch(first, optimizer, scheduler, 2)
    first.observe({"0": torch.tensor(0.2), "2": torch.tensor(0.4)})  # part of epoch 3
    state = first.state_dict()
    second, optimizer2, scheduler2 = setup()
    second.load_state_dict(state)
    optimizer2.load_state_dict(optimizer.state_dict())
    scheduler2.load_state_dict(scheduler.state_dict())
    optimizer2.step()
    scheduler2.step()
    assert second.end_epoch(3, optimizer2, scheduler2)["layer_lr"] == pytest.approx(AFTER_3)


@pytest.mark.parametrize("options, message", [
    (dict(every=0), "every: expected a positive number"),
    (dict(rule="cosine"), "rule: expected one of ema_inverse, relative"),
    (dict(mu=1.5), "mu: expected a number in"),
    (dict(eps=0.0), "eps: expected eps > 0"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        LayerLR(**options)


def test_unknown_layer_is_named():
    with pytest.raises(ValueError, match="'9' is not a module"):
        LayerLR().param_groups(net(), ["0", "9"], lr=0.1)


def test_driver_updates_the_crucial_rates_from_the_logged_divergences(tiny_digits, tmp_path):
    import json

    from hyperkd import models
    from hyperkd.train.layer_lr_run import train_with_layer_lr

    torch.manual_seed(0)
    torch.save({"model": models.create("resnet18_x0_25", num_classes=10).state_dict()}, tmp_path / "t.pt")
    train_with_layer_lr(tmp_path / "run", teacher_checkpoint=tmp_path / "t.pt", teacher_model="resnet18_x0_25",
                        model="resnet10_x0_25", kd="jsd:map=attention", lr_mode="layerwise", every=1,
                        epochs=2, lr=0.05, batch_size=48)
    first, second = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    layers = ["conv1", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1"]
    assert set(second["layer_divergence"]) == set(layers)
    for j in layers:
        # The epoch-0 mean of the logged per-layer term, and the rule with m starting at it.
        assert second["layer_divergence"][j] == pytest.approx(first[f"kd/jsd/{j}"], rel=1e-5)
        expected = 0.9 * 0.05 + 0.1 * 0.05 / (first[f"kd/jsd/{j}"] + 1e-8)
        assert second["layer_lr"][j] == pytest.approx(expected, rel=1e-4)
    assert second["lr"] == pytest.approx(0.005)  # the shared group, after the milestone at epoch 1
    assert (tmp_path / "run" / "layer_lr.png").stat().st_size > 0


def test_driver_rejects_an_unknown_lr_mode(tmp_path):
    from hyperkd.train.layer_lr_run import train_with_layer_lr

    with pytest.raises(ValueError, match="lr_mode: expected one of none, constant, layerwise"):
        train_with_layer_lr(tmp_path, teacher_checkpoint=tmp_path / "t.pt", lr_mode="cyclic")
