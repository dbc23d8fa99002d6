"""Training phases on digits with a tiny net: reconstruction, resume, progressive, decouple."""
import json

import pytest
import torch

from hyperkd import data
from hyperkd.siren import Representation, phases
from hyperkd.siren.phases import (KernelSampler, decouple, fmd_loss, interpolate, load_representation,
                                  progressive, reconstruct)
from hyperkd.train.checkpoint import load_checkpoint
from tests.siren.nets import TinyNet

OPTIONS = dict(width=16, depth=4, encoding="siren")


@pytest.fixture(scope="module")
def loaders():
    return data.loaders("digits", 128, seed=0, augment=False)


def test_reconstruction_lowers_the_kernel_error(loaders, tmp_path):
    torch.manual_seed(0)
    net = TinyNet().eval()
    rep = Representation(net, **OPTIONS)
    before = (rep.decode() - rep.layout.gather_kernels(net)).square().mean()
    best = reconstruct(rep, net, loaders, tmp_path, epochs=3, lr=1e-3, kernel_batch=64)
    after = (rep.decode() - rep.layout.gather_kernels(net)).square().mean()
    assert after < 0.5 * before
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1, 2] and "recon" in lines[0]
    assert 0.0 <= best["val_acc"] <= 1.0 and (tmp_path / "best.pt").is_file()


def test_resume_after_a_kill_is_exact(loaders, tmp_path, monkeypatch):
    def run(out, resume=False):
        torch.manual_seed(0)
        net = TinyNet().eval()
        torch.manual_seed(1)
        rep = Representation(net, **OPTIONS)
        reconstruct(rep, net, loaders, out, epochs=3, lr=1e-3, kernel_batch=32, resume=resume)
        return rep

    straight = run(tmp_path / "a")
    draw, calls = phases.KernelSampler.__call__, []

    def killed_inside_the_second_epoch(self):
        calls.append(1)
        if len(calls) == len(loaders[0]) + 3:
            raise KeyboardInterrupt
        return draw(self)

    monkeypatch.setattr(phases.KernelSampler, "__call__", killed_inside_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(phases.KernelSampler, "__call__", draw)
    resumed = run(tmp_path / "b", resume=True)
    for (name, p), q in zip(straight.predictor.named_parameters(), resumed.predictor.parameters()):
        assert torch.equal(p, q), name
    a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda r: {k: v for k, v in json.loads(r).items() if k not in ("epoch_time_s", "peak_memory_bytes")}
    assert len(a) == 3 and [strip(r) for r in a] == [strip(r) for r in b]


def test_kernel_sampler_draws_proportionally_to_the_norm():
    torch.manual_seed(0)
    targets = torch.tensor([[3.0], [1.0], [0.0]])
    draws = torch.cat([KernelSampler(targets, batch=100, p_uniform=0.0)() for _ in range(40)])
    counts = torch.bincount(draws, minlength=3).float() / draws.numel()
    assert counts[2] == 0 and abs(counts[0] - 0.75) < 0.03


def test_decouple_needs_a_teacher_and_distils(loaders, tmp_path):
    net = TinyNet().eval()
    rep = Representation(net, **OPTIONS)
    with pytest.raises(ValueError, match="teacher"):
        decouple(rep, None, loaders, tmp_path, epochs=1)
    before = [p.detach().clone() for p in rep.predictor.parameters()]
    decouple(rep, net, loaders, tmp_path, epochs=1, lr=1e-3, noise=True)
    assert any(not torch.equal(a, b) for a, b in zip(before, rep.predictor.parameters()))
    assert "kd" in json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])


def test_progressive_rejects_rounds_below_one(loaders, tmp_path):
    with pytest.raises(ValueError, match="rounds"):
        progressive(TinyNet(), loaders, tmp_path, rounds=0, epochs=1, baseline_val=0.0,
                    representation_options=OPTIONS)


def test_progressive_stops_at_the_first_round_without_improvement(loaders, tmp_path):
    history = progressive(TinyNet().eval(), loaders, tmp_path, rounds=3, epochs=1, baseline_val=1.1,
                          representation_options=OPTIONS, kernel_batch=32)
    assert len(history) == 1 and not history[0]["kept"]


def test_progressive_keeps_an_improving_round_and_reconstructs_its_decoded_net_next(loaders, tmp_path,
                                                                                   monkeypatch):
    """A round that beats its target's accuracy is kept: the next round reconstructs the kept
    round's best predictor decoded into a plain net (``materialise``) and is judged against its
    accuracy."""
    targets, reconstruct_ = [], phases.reconstruct
    monkeypatch.setattr(phases, "reconstruct",
                        lambda rep, target, *a, **k: targets.append(target) or reconstruct_(rep, target, *a, **k))
    torch.manual_seed(0)
    original = TinyNet().eval()
    history = progressive(original, loaders, tmp_path, rounds=2, epochs=1, baseline_val=-1.0,
                          representation_options=OPTIONS, kernel_batch=32)
    assert len(history) == 2 and len(targets) == 2 and targets[0] is original
    assert history[0]["kept"] and history[0]["target_val_acc"] == -1.0
    assert history[1]["target_val_acc"] == history[0]["val_acc"]
    assert history[1]["kept"] == (history[1]["val_acc"] > history[0]["val_acc"])
    kept = load_representation(original, tmp_path / "round1" / "best.pt", **OPTIONS).materialise()
    assert not any(p is q for p, q in zip(targets[1].parameters(), kept.parameters()))
    for (name, want), got in zip(kept.state_dict().items(), targets[1].state_dict().values()):
        assert torch.equal(got, want), name
    assert not torch.equal(targets[1].conv1.weight, original.conv1.weight)


def test_load_representation_round_trip_and_missing_file(loaders, tmp_path):
    net = TinyNet().eval()
    rep = Representation(net, **OPTIONS)
    reconstruct(rep, net, loaders, tmp_path, epochs=1, kernel_batch=32)
    best = load_checkpoint(tmp_path / "best.pt")["model"]
    restored = load_representation(net, tmp_path / "best.pt", **OPTIONS)
    for k, v in restored.state_dict().items():
        assert torch.equal(v, best[k])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_representation(net, tmp_path / "missing.pt", **OPTIONS)


def test_interpolation_endpoints():
    a, b = TinyNet(), TinyNet()
    assert torch.equal(interpolate(a, b, 0.0).conv1.weight, a.conv1.weight)
    torch.testing.assert_close(interpolate(a, b, 1.0).conv1.weight, b.conv1.weight)


def test_fmd_loss_is_zero_for_equal_features_and_scale_free():
    f = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    assert fmd_loss(f, [2.0 * t for t in f]).item() < 1e-6
    # Orthogonal unit features differ by √2 per sample and layer.
    a, b = torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    a[0, 0], b[0, 1] = 1.0, 1.0
    assert fmd_loss([a], [b]).item() == pytest.approx(2 ** 0.5)


def test_joint_baseline_logs_every_term(loaders, tmp_path):
    net = TinyNet().eval()
    rep = Representation(net, **OPTIONS)
    reconstruct(rep, net, loaders, tmp_path, epochs=1, kernel_batch=32, kd_weight=1e-2, fmd_weight=1e-2)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"recon", "kd", "fmd", "train_acc"} <= set(record) and record["fmd"] > 0
    assert not rep.seed.conv1._forward_hooks  # the taps are gone once the phase returns


def test_evaluation_decodes_once_per_predictor_state(monkeypatch):
    """Val and test of one epoch share a decode; an optimizer step or a load invalidates it."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    rep = Representation(net, **OPTIONS)
    calls = []
    decode = rep.decode
    monkeypatch.setattr(rep, "decode", lambda: calls.append(1) or decode())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        rep.eval()
        first = rep.logits(x)
        rep.eval()  # the Trainer calls eval() once per split
        assert torch.equal(rep.logits(x), first) and len(calls) == 1
    optimizer = torch.optim.Adam(rep.predictor.parameters(), lr=1e-2)
    rep.train()
    rep.logits(x).square().mean().backward()
    optimizer.step()
    rep.eval()
    with torch.no_grad():
        stepped = rep.logits(x)
        assert len(calls) == 3 and not torch.equal(stepped, first)  # one train, one fresh eval decode
        state = {k: v.clone() for k, v in rep.state_dict().items()}
        with torch.no_grad():
            rep.predictor.out_bias.add_(1.0)  # an in-place edit in eval mode is seen
        assert not torch.equal(rep.logits(x), stepped) and len(calls) == 4
        rep.load_state_dict(state)
        assert torch.equal(rep.logits(x), stepped) and len(calls) == 5


def _bn_state(rep):
    return {k: v.clone() for k, v in rep.seed.state_dict().items()
            if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("noise", [False, True])
def test_phase2_keeps_the_decoded_nets_batchnorm_statistics(loaders, tmp_path, noise):
    """The decoded CNN's BatchNorm runs on the original's running statistics in eval mode during
    phase 2: neither images nor U[−1, 1] noise may overwrite them (only the predictor trains)."""
    torch.manual_seed(0)
    net = TinyNet()
    net.train()(torch.randn(64, 3, 8, 8) * 3 + 1)  # statistics that batch statistics would change
    net.eval()
    rep = Representation(net, **OPTIONS)
    before = _bn_state(rep)
    decouple(rep, net, loaders, tmp_path, epochs=1, lr=1e-3, noise=noise)
    after = _bn_state(rep)
    assert before.keys() == after.keys() and before
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert not rep.seed.training


def test_joint_baseline_keeps_the_decoded_nets_batchnorm_statistics(loaders, tmp_path):
    """The joint baseline goes through the same ``Representation.logits``: same frozen BatchNorm."""
    torch.manual_seed(0)
    net = TinyNet()
    net.train()(torch.randn(64, 3, 8, 8) * 3 + 1)
    net.eval()
    rep = Representation(net, **OPTIONS)
    before = _bn_state(rep)
    reconstruct(rep, net, loaders, tmp_path, epochs=1, lr=1e-3, kernel_batch=32, kd_weight=1e-2,
                fmd_weight=1e-2)
    after = _bn_state(rep)
    assert before.keys() == after.keys() and before
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_decouple_default_lr_is_the_measured_one():
    """Phase 2's default Adam lr is 2e-6: 1e-4 (the old default) killed the decoded ResNet-20 on
    digits in one step (docs/siren.md, "Why phase 2 collapsed")."""
    import inspect
    assert phases.DECOUPLE_LR == pytest.approx(2e-6)
    assert inspect.signature(decouple).parameters["lr"].default == phases.DECOUPLE_LR
