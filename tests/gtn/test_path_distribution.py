"""The learnt path distribution: uniform start, the REINFORCE estimate and its effect on a toy with
a known reward, the held-out split, exact resume of α and Adam's state, and bad settings named by
their flag."""
import json
import math
import random

import pytest
import torch

from hyperkd import data
from hyperkd.gtn.holdout import HoldoutBatches, holdout_loaders, holdout_split
from hyperkd.gtn.path_distribution import PathDistribution, PathLearner, kept_batch_norm_statistics
from hyperkd.gtn.supernet import Supernet
from hyperkd.gtn.train import GraftConfig, train_grafted_teacher
from hyperkd.models.nas import PRESETS

VOLATILE = ("epoch_time_s", "peak_memory_bytes", "branch_eval_s")


def test_starts_uniform_over_the_learnt_layers_only():
    candidates = Supernet(PRESETS["small"], num_classes=3).candidates()
    dist = PathDistribution(candidates, learnt=range(2, 6))
    for l, p in zip(dist.learnt, dist.probs()):
        assert torch.allclose(p, torch.full((len(candidates[l]),), 1 / len(candidates[l])))
        assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    weights = dist.weights()
    assert weights[:2] == [None, None] and all(len(w) == len(c) for w, c in zip(weights[2:], candidates[2:]))
    spec = tuple(c[-1] for c in candidates)
    assert dist.log_prob(spec).item() == pytest.approx(-sum(math.log(len(c)) for c in candidates[2:]), rel=1e-6)
    record = dist.record()
    assert record["arch/entropy"] == pytest.approx(sum(math.log(len(c)) for c in candidates[2:]), rel=1e-6)
    assert sum(v for k, v in record.items() if k.startswith("arch/layer3/") and k != "arch/layer3/entropy") \
        == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"learnt: expected distinct layer indices in \[0, 6\)"):
        PathDistribution(candidates, learnt=[6])


def test_the_supernet_samples_from_the_learnt_weights():
    net = Supernet(PRESETS["small"], num_classes=3)
    dist = PathDistribution(net.candidates(), learnt=[5])
    with torch.no_grad():
        dist.logits[0].copy_(torch.tensor([-50.0] * (len(net.candidates()[5]) - 1) + [50.0]))
    rng = random.Random(0)
    specs = [net.sample(rng, probs=dist.weights()) for _ in range(20)]
    assert {s[5] for s in specs} == {net.candidates()[5][-1]} and len({s[0] for s in specs}) > 1
    assert net.probs == [None] * 6  # the supernet's own weights are left as they were
    with pytest.raises(ValueError, match="probs: expected one entry per layer"):
        net.sample(rng, probs=dist.weights()[:5])


def test_the_update_follows_the_score_function():
    """Adam is handed ∂/∂α of −(R − b)·log p(s) = −(R − b)·(onehot(s_l) − softmax(α_l))."""
    dist = PathDistribution([("a", "b", "c"), ("x", "y")], learnt=[0, 1])
    with torch.no_grad():
        dist.logits[0].copy_(torch.tensor([0.3, -0.2, 0.5]))
    learner = PathLearner(dist, lr=0.1, every=1)
    learner.baseline = 0.5
    p0 = [p.detach().clone() for p in dist.probs()]
    assert learner.update(("b", "x"), reward=2.0) == pytest.approx(1.5)
    expected = [-1.5 * (torch.tensor([0.0, 1.0, 0.0]) - p0[0]), -1.5 * (torch.tensor([1.0, 0.0]) - p0[1])]
    for a, g in zip(dist.logits, expected):
        torch.testing.assert_close(a.grad, g)
    assert dist.probs()[0][1] > p0[0][1] and dist.probs()[1][0] > p0[1][0]  # a good reward: more likely
    assert learner.baseline == pytest.approx(0.99 * 0.5 + 0.01 * 2.0)


def test_reinforce_moves_probability_to_the_better_operation():
    dist = PathDistribution([("a", "b", "c")], learnt=[0])
    learner = PathLearner(dist, lr=0.05, every=1)
    rng, reward = random.Random(0), {"a": 0.2, "b": 1.0, "c": 0.0}
    for _ in range(300):
        op = rng.choices(dist.candidates[0], weights=learner.weights[0])[0]
        learner.update((op,), reward[op] + rng.gauss(0.0, 0.1))
    p = dist.probs()[0]
    assert p[1] > 0.9, p
    assert learner.record()["arch/entropy"] < 0.5 * math.log(3)


def test_holdout_split_is_disjoint_and_seeded():
    fit, held = holdout_split(100, 0.2, seed=3)
    assert len(held) == 20 and len(fit) == 80
    assert set(fit.tolist()).isdisjoint(held.tolist()) and set(fit.tolist()) | set(held.tolist()) == set(range(100))
    assert torch.equal(held, holdout_split(100, 0.2, seed=3)[1])
    assert not torch.equal(held, holdout_split(100, 0.2, seed=4)[1])
    with pytest.raises(ValueError, match="--arch-holdout-fraction"):
        holdout_split(3, 0.1, seed=0)  # rounds to no held-out item


def test_holdout_loaders_keep_the_held_out_items_from_the_weights(tiny_digits):
    train, holdout, val, test = holdout_loaders("digits", 16, 0.25, seed=0)
    _, plain_val, plain_test = data.loaders("digits", 16, seed=0)
    fit_items = set(train.dataset.indices)
    held_items = set(holdout.dataset.indices)
    assert len(held_items) == 24 and len(fit_items) == 72 and fit_items.isdisjoint(held_items)
    seen = sum(len(y) for _, y in train)
    assert seen == 72  # an epoch trains on the 72 items left, never the held-out ones
    for a, b in zip(val, plain_val):  # validation is the same data set as without a hold-out
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(val.dataset) == len(plain_val.dataset) and len(test.dataset) == len(plain_test.dataset)
    again = HoldoutBatches(holdout.dataset, 16, seed=0)
    for t in (0, 1, 5):  # batch t is a function of (seed, t): a resumed run sees the same ones
        x, y = holdout.batch(t)
        assert x.shape[0] == 16 and torch.equal(x, again.batch(t)[0]) and torch.equal(y, again.batch(t)[1])


def test_held_out_forward_leaves_batch_norm_statistics():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with kept_batch_norm_statistics(net), torch.no_grad():
        net(torch.randn(8, 3, 4, 4) + 3)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def _records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_learnt_distribution_trains_logs_and_resumes_exactly(tmp_path, tiny_digits, monkeypatch):
    from hyperkd.cli import main

    cfg = GraftConfig(method="gtn", path_distribution="learnt", arch_lr=0.05, arch_every=1,
                      arch_holdout_fraction=0.25)
    run = dict(epochs=2, batch_size=48, progress=False)
    # The uninterrupted run through the command, so that its flags are checked against cfg too.
    assert main(["teacher", "--model", "resnet20", "--data", "digits", "--out", str(tmp_path / "straight"),
                 "--epochs", "2", "--batch-size", "48", "--lr", "0.05", "--schedule", "multistep",
                 "--method", "gtn", "--path-distribution", "learnt", "--arch-lr", "0.05", "--arch-every", "1",
                 "--arch-holdout-fraction", "0.25"]) == 0
    update, calls = PathLearner.update, {"n": 0}

    def killed_in_epoch_1(self, spec, reward):  # 2 steps an epoch (72 items, batch 48)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return update(self, spec, reward)

    monkeypatch.setattr(PathLearner, "update", killed_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_grafted_teacher("resnet20", "digits", tmp_path / "killed", cfg, **run)
    monkeypatch.setattr(PathLearner, "update", update)
    train_grafted_teacher("resnet20", "digits", tmp_path / "killed", cfg, **run, resume=True)

    records = _records(tmp_path / "straight")
    assert _records(tmp_path / "killed") == records
    assert [r["arch/updates"] for r in records] == [2, 4]
    for layer in (3, 4, 5, 6):
        probs = [v for k, v in records[-1].items() if k.startswith(f"arch/layer{layer}/") and not k.endswith("entropy")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6) and f"arch/layer{layer}/entropy" in records[-1]
    assert "arch/layer1/k3d2" not in records[-1] and records[-1]["arch/entropy"] > 0
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["stateful"]["path_distribution"]
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["stateful"]["path_distribution"]
    assert a["steps"] == b["steps"] == 4 and a["baseline"] == b["baseline"]
    for name, alpha in a["distribution"].items():
        assert torch.equal(alpha, b["distribution"][name]), name
        assert not torch.equal(alpha, torch.zeros_like(alpha)), f"{name} never moved"
    for i, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][key]), (i, key)


def test_bad_settings_name_their_flag(tmp_path, capsys):
    from hyperkd.cli import main

    for bad, flag in [(dict(method="sftn", path_distribution="learnt"), "--path-distribution"),
                      (dict(path_distribution="learned"), "--path-distribution"),
                      (dict(arch_lr=0.0), "--arch-lr"), (dict(arch_every=0), "--arch-every"),
                      (dict(arch_every=2.5), "--arch-every"), (dict(arch_holdout_fraction=1.0), "--arch-holdout-fraction"),
                      (dict(arch_baseline_decay=1.0), "--arch-baseline-decay")]:
        with pytest.raises(ValueError, match=flag):
            GraftConfig(**bad).check()
    code = main(["teacher", "--model", "resnet20", "--epochs", "1", "--out", str(tmp_path / "t"),
                 "--method", "gtn", "--path-distribution", "learnt", "--arch-every", "0"])
    assert code == 2 and "--arch-every" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
