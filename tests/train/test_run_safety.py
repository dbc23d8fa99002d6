"""No run is lost or mislabelled: a folder holding a run is refused without --resume/--overwrite,
a resume or a sweep's skip checks the run's identity (the message names the flag), a resumed run
with more epochs gets the schedule of its new length, a kill during the first checkpoint write
leaves no orphan and no doubled log line, and a sweep records a diverged run and goes on."""
import json
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hyperkd.train import loop, sweep
from hyperkd.train.checkpoint import save_checkpoint
from hyperkd.train.loop import NonFiniteLossError, Trainer
from hyperkd.train.run_identity import check_out_dir, student_identity
from hyperkd.train.step import StepOutput
from hyperkd.train.student import StudentConfig

IDENTITY = {"run": "test", "lr": 0.1, "hidden": [4, 8], "epochs": 2}


def trainer(out, epochs=2, identity=IDENTITY, overwrite=False, lr=0.1):
    """A 2-class MLP on 64 points (8 steps per epoch) with a cosine schedule over ``epochs``."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(96, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    loaders = (DataLoader(TensorDataset(x[:64], y[:64]), batch_size=8, shuffle=True,
                          generator=torch.Generator().manual_seed(0)),
               DataLoader(TensorDataset(x[64:80], y[64:80]), batch_size=8),
               DataLoader(TensorDataset(x[80:], y[80:]), batch_size=8))
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(xb, yb, epoch):
        logits = model(xb)
        return StepOutput.of(logits, {"ce": nn.functional.cross_entropy(logits, yb)})

    return Trainer(model, opt, step, *loaders, out_dir=out, progress=False, identity=identity,
                   scheduler=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs), overwrite=overwrite)


def epochs_logged(out):
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    trainer(tmp_path).fit(2)
    best = (tmp_path / "best.pt").read_bytes()
    with pytest.raises(ValueError, match=r"--out: .* already holds a finished run; continue it with "
                                         r"--resume, start it afresh with --overwrite"):
        trainer(tmp_path, epochs=1).fit(1)
    assert (tmp_path / "best.pt").read_bytes() == best and epochs_logged(tmp_path) == [0, 1]
    trainer(tmp_path, epochs=1, overwrite=True).fit(1)
    assert epochs_logged(tmp_path) == [0]
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 1


def test_resume_refuses_another_runs_checkpoint_naming_the_flag(tmp_path):
    trainer(tmp_path, epochs=2).fit(1)  # killed after epoch 0 of 2, as far as the folder shows
    assert json.loads((tmp_path / "summary.json").read_text())["identity"] == IDENTITY
    with pytest.raises(ValueError, match=r"^--lr: the run in .* was trained with --lr 0.1, this "
                                         r"command gives 0.2; resume only with the run's own flags"):
        trainer(tmp_path, identity={**IDENTITY, "lr": 0.2}).fit(2, resume=True)
    with pytest.raises(ValueError, match=r"^--hidden: .* with --hidden 4,8, this command gives 4,16"):
        trainer(tmp_path, identity={**IDENTITY, "hidden": [4, 16]}).fit(2, resume=True)
    with pytest.raises(ValueError, match="--resume and --overwrite|excludes --resume"):
        check_out_dir(tmp_path, IDENTITY, resume=True, overwrite=True)
    with pytest.raises(ValueError, match=r"^--epochs: .* planned for 2 epochs; a resume may extend it, not shorten"):
        trainer(tmp_path, identity={**IDENTITY, "epochs": 1}).fit(1, resume=True)


@pytest.mark.parametrize("change", [dict(kd="ab"), dict(model="resnet32"), dict(hidden=(4, 16)),
                                    dict(optimizer="adam"), dict(lr=0.01), dict(lr_schedule="multistep"),
                                    dict(fused_step=True), dict(seed=1), dict(data="cifar10"),
                                    dict(kd_weight=0.5), dict(amp="bf16")])
def test_student_identity_names_each_changed_flag(tmp_path, change):
    base = StudentConfig(model="resnet20", teacher=tmp_path / "t.pt", kd="at0", hidden=(4, 8), epochs=2)
    save_checkpoint(tmp_path / "last.pt", {"identity": student_identity(base)})
    check_out_dir(tmp_path, student_identity(replace(base, device="cpu", workers=2)), resume=True)
    check_out_dir(tmp_path, student_identity(replace(base, epochs=5)), resume=True)  # an extension
    key = next(iter(change))
    flag = "--" + key.replace("_", "-")
    with pytest.raises(ValueError, match=f"^{flag}: the run in .* was trained with {flag} "):
        check_out_dir(tmp_path, student_identity(replace(base, **change)), resume=True)


def test_no_kd_identity_ignores_the_kd_only_settings(tmp_path):
    base = StudentConfig(model="resnet20", kd="none", teacher=tmp_path / "a.pt")
    assert student_identity(base) == student_identity(replace(base, teacher=None, kd_weight=3.0))
    assert "teacher" not in student_identity(base)


def test_more_epochs_on_resume_continue_on_the_longer_schedule(tmp_path):
    trainer(tmp_path, epochs=1).fit(1)  # cosine over 1 epoch: finished at lr 0
    longer = trainer(tmp_path, epochs=2)
    longer.fit(2, resume=True)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # epoch 1 of a 2-epoch cosine from 0.1: 0.1·(1 + cos(π/2))/2
    assert [r["epoch"] for r in records] == [0, 1] and records[1]["lr"] == pytest.approx(0.05)


def test_a_kill_during_the_first_checkpoint_write_leaves_no_orphan_and_no_doubled_line(tmp_path, monkeypatch):
    real_save = loop.save_checkpoint

    def killed_mid_write(path, state):
        if path.name == "last.pt":  # what SIGKILL leaves: the temporary file, no rename
            (path.parent / f".{path.name}.k1ll3d.tmp").write_bytes(b"partial")
            raise KeyboardInterrupt("killed")
        return real_save(path, state)

    monkeypatch.setattr(loop, "save_checkpoint", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path).fit(2)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    trainer(tmp_path).fit(2, resume=True)
    assert not list(tmp_path.glob(".*.tmp"))
    assert epochs_logged(tmp_path) == [0, 1]


def test_a_kill_between_checkpoint_and_log_line_restores_the_line(tmp_path, monkeypatch):
    real_append = loop.MetricsLog.append

    def killed_before_epoch_1_line(self, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt("killed")
        real_append(self, record)

    straight = trainer(tmp_path / "a", epochs=3)
    straight.fit(3)
    monkeypatch.setattr(loop.MetricsLog, "append", killed_before_epoch_1_line)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "b", epochs=3).fit(3)
    monkeypatch.setattr(loop.MetricsLog, "append", real_append)
    trainer(tmp_path / "b", epochs=3).fit(3, resume=True)
    volatile = ("epoch_time_s", "peak_memory_bytes")
    strip = [{k: v for k, v in r.items() if k not in volatile} for r in straight.metrics.records()]
    resumed = [{k: v for k, v in r.items() if k not in volatile}
               for r in loop.MetricsLog(tmp_path / "b" / "metrics.jsonl").records()]
    assert resumed == strip


def test_nonfinite_stop_names_term_and_layer():
    stop = NonFiniteLossError.first_of({"loss": float("nan"), "ce": 2.0, "kd": float("inf"),
                                        "kd/conv1": 1.0, "kd/conv2": float("inf")}, epoch=3, step=7)
    assert (stop.term, stop.layer, stop.epoch, stop.step) == ("kd", "conv2", 3, 7)
    assert str(stop).startswith("loss term 'kd' is inf (first at layer 'conv2') at epoch 3, step 7")


# -- sweeps ------------------------------------------------------------------------------------
def fake_finished_runs(base, methods, seeds, out):
    for method in methods:
        for seed in seeds:
            folder = sweep.run_dir(out, method, seed)
            folder.mkdir(parents=True)
            summary = {"epoch": 0, "val_acc": 0.5, "test_acc": 0.5, "epochs": 1, "mean_epoch_time_s": 1.0,
                       "peak_memory_bytes": 1, "identity": student_identity(replace(base, kd=method, seed=seed))}
            (folder / "summary.json").write_text(json.dumps(summary))
            (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val_acc": 0.5}) + "\n")


def must_not_train(*args, **kwargs):
    raise AssertionError("a run was trained")


@pytest.mark.parametrize("change", [dict(lr=0.001), dict(hidden=(8, 16, 32)), dict(epochs=2)])
def test_sweep_refuses_to_skip_runs_of_other_flags(tmp_path, monkeypatch, change):
    base = StudentConfig(model="resnet20", teacher=tmp_path / "t.pt", kd="at0", epochs=1)
    fake_finished_runs(base, ["none", "at0"], [0, 1], tmp_path)
    monkeypatch.setattr(sweep, "train_student", must_not_train)
    assert len(sweep.run_sweep(base, ["none", "at0"], [0, 1], tmp_path, progress=False)["at0"]) == 2
    flag = "--" + next(iter(change)).replace("_", "-")
    with pytest.raises(ValueError, match=f"^{flag}: the run in .*none.seed0 was trained with {flag} "):
        sweep.run_sweep(replace(base, **change), ["none", "at0"], [0, 1], tmp_path, progress=False)


def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    base = StudentConfig(model="resnet20", teacher=tmp_path / "t.pt", kd="at0", epochs=1)
    fake_finished_runs(base, ["none"], [0, 1], tmp_path)
    trained = []

    def diverging(cfg, folder, **kwargs):
        trained.append(cfg.seed)
        if cfg.seed == 1:
            raise NonFiniteLossError.first_of({"loss": float("nan"), "kd": float("nan"), "kd/layer1.0.conv1":
                                               float("nan")}, epoch=0, step=2)
        fake_finished_runs(replace(base, seed=0), ["at0"], [0], tmp_path)

    monkeypatch.setattr(sweep, "train_student", diverging)
    results = sweep.run_sweep(base, ["none", "at0"], [0, 1], tmp_path, progress=False)
    assert trained == [0, 1]
    assert json.loads((tmp_path / "at0" / "seed1" / "diverged.json").read_text())["diverged"] == {
        "term": "kd", "layer": "layer1.0.conv1", "epoch": 0, "step": 2,
        "message": "loss term 'kd' is nan (first at layer 'layer1.0.conv1') at epoch 0, step 2: stopping "
                   "instead of training on it"}
    table = sweep.report(results, tmp_path, ["none", "at0"], [0, 1])
    assert "| at0 | 50.00 (1/2 diverged) |" in table
    assert "- at0: seed 1: kd at layer layer1.0.conv1, epoch 0, step 2" in table
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert csv[0].endswith(",diverged,stops") and csv[2].startswith("at0,50.0,0.0,1,")
    assert (tmp_path / "convergence.png").stat().st_size > 0
    assert sweep.diverged_runs(results) == [f"at0 seed 1 ({results['at0'][1]['diverged']['message']})"]
    monkeypatch.setattr(sweep, "train_student", must_not_train)  # a diverged run is skipped next time
    assert "diverged" in sweep.run_sweep(base, ["none", "at0"], [0, 1], tmp_path, progress=False)["at0"][1]


def test_off_a_terminal_each_epoch_is_one_line_and_no_bar_redraws(tmp_path, capsys):
    run = trainer(tmp_path)
    run.progress = True
    run.fit(2)
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err
    assert [line.split()[:2] for line in err.splitlines() if "epoch" in line] == [["epoch", "0"], ["epoch", "1"]]
