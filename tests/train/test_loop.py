"""The epoch loop: model selection on validation, exact resume after a kill (fp16 loss scaling
included), NaN stops."""
import mmap
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hyperkd.hyper import HyperOptimizer, hypernetize
from hyperkd.runtime import _proc_status_kib, peak_memory_bytes, reset_peak_memory
from hyperkd.train.loop import NonFiniteLossError, Trainer
from hyperkd.train.step import StepOutput

VOLATILE = ("epoch_time_s", "peak_memory_bytes")


def tiny_loaders(seed=0):
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(96, 8, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    train = TensorDataset(x[:64], y[:64])
    val, test = TensorDataset(x[64:80], y[64:80]), TensorDataset(x[80:], y[80:])
    return (DataLoader(train, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed)),
            DataLoader(val, batch_size=8), DataLoader(test, batch_size=8))


def make_trainer(out_dir, fail_at=None, fp16=False):
    """A small MLP with SGD; ``fp16``: hypernetised (a γ drawn every step), autocast to fp16,
    the fused step and a loss scale that starts high enough to overflow, back off and regrow."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    scaler = None
    if fp16:
        model = hypernetize(model, hidden=(4, 8), types=(nn.Linear,))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, growth_interval=3)
        opt = HyperOptimizer(model, "sgd", lr=0.1, momentum=0.9, scaler=scaler)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt.inner if fp16 else opt, T_max=4)
    calls = {"n": 0}

    def loss_fn(x, y, epoch):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt("killed")
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
            logits = model(x).float()
        return StepOutput.of(logits, {"ce": nn.functional.cross_entropy(logits, y)})

    return Trainer(model, opt, loss_fn, *tiny_loaders(), out_dir=out_dir, scheduler=sched, progress=False,
                   on_epoch=lambda e: {"lambda": 0.1 * e}, scaler=scaler)


def strip(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16-scaled"])
def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, fp16):
    straight = make_trainer(tmp_path / "a", fp16=fp16)
    straight.fit(4)
    killed = make_trainer(tmp_path / "b", fail_at=8 * 2 + 3, fp16=fp16)  # inside the third epoch
    with pytest.raises(KeyboardInterrupt):
        killed.fit(4)
    resumed = make_trainer(tmp_path / "b", fp16=fp16)
    best = resumed.fit(4, resume=True)
    assert strip(resumed.metrics.records()) == strip(straight.metrics.records())
    assert best == straight.best
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    if fp16:
        assert resumed.scaler.state_dict() == straight.scaler.state_dict()


def test_model_selection_records_test_accuracy_only_on_improvement(tmp_path):
    trainer = make_trainer(tmp_path)
    best = trainer.fit(4)
    records = trainer.metrics.records()
    improved = [r for r in records if r["test_acc"] is not None]
    assert improved and improved[-1]["epoch"] == best["epoch"]
    assert best["val_acc"] == max(r["val_acc"] for r in records)
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    assert [r["lambda"] for r in records] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_nan_loss_stops_and_names_the_term(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train_step = lambda x, y, epoch: StepOutput.of(trainer.model(x), {"kd/layer3": torch.tensor(float("nan"))})
    with pytest.raises(NonFiniteLossError, match="'kd/layer3' is nan at epoch 0, step 0"):
        trainer.fit(1)


def test_logged_values_are_checked_and_averaged_but_not_minimised(tmp_path):
    trainer = make_trainer(tmp_path)
    model = trainer.model

    def loss_fn(x, y, epoch):
        logits = model(x)
        ce = nn.functional.cross_entropy(logits, y)
        return StepOutput.of(logits, {"ce": ce}, {"kd/conv1": torch.tensor(2.0)})

    trainer.train_step = loss_fn
    trainer.fit(1)
    record = trainer.metrics.records()[0]
    assert record["kd/conv1"] == pytest.approx(2.0) and record["loss"] == pytest.approx(record["ce"])
    trainer.train_step = lambda x, y, epoch: StepOutput.of(model(x), {"ce": torch.tensor(1.0, requires_grad=True)},
                                                           {"kd/conv2": torch.tensor(float("inf"))})
    with pytest.raises(NonFiniteLossError, match="'kd/conv2' is inf"):
        trainer.fit(2, resume=True)


def test_epochs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="epochs: expected a positive integer"):
        make_trainer(tmp_path).fit(0)


def test_a_fused_hyper_optimizer_needs_the_trainers_scaler(tmp_path):
    model = hypernetize(nn.Sequential(nn.Linear(8, 2)), hidden=(4,), types=(nn.Linear,))
    opt = HyperOptimizer(model, "sgd", lr=0.1)
    with pytest.raises(ValueError, match=r"scaler: .*HyperOptimizer\(\.\.\., scaler=scaler\)"):
        Trainer(model, opt, None, *tiny_loaders(), out_dir=tmp_path,
                scaler=torch.amp.GradScaler("cpu"))


def test_cpu_peak_memory_restarts_after_a_reset():
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the RSS high-water mark cannot be reset here (no writable /proc/self/clear_refs)")
    cpu = torch.device("cpu")
    size = 256 * 2 ** 20
    # An anonymous mapping, not a tensor: its close is an munmap, whatever allocator the process
    # runs with (a caching malloc would keep a freed tensor's pages resident).
    block = mmap.mmap(-1, size)
    page_run = b"\1" * 2 ** 20
    for _ in range(size // len(page_run)):
        block.write(page_run)
    before = peak_memory_bytes(cpu)
    block.close()
    if _proc_status_kib(("VmRSS",))["VmRSS"] * 1024 > before - 200 * 2 ** 20:
        pytest.skip("unmapping 256 MiB did not lower this process's RSS here")
    if not reset_peak_memory(cpu):
        pytest.skip("this system ignores writes to /proc/self/clear_refs (VmHWM stayed above VmRSS)")
    assert peak_memory_bytes(cpu) < before - 200 * 2 ** 20


def test_cpu_peak_memory_reset_reports_an_ignored_write(monkeypatch, tmp_path):
    """A sandbox that swallows the clear_refs write leaves VmHWM above VmRSS: the reset says so."""
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t 2000000 kB\nVmRSS:\t 1000 kB\n")
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/self/clear_refs":
            return real_open(tmp_path / "clear_refs", *args, **kwargs)
        if path == "/proc/self/status":
            return real_open(status, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert reset_peak_memory(torch.device("cpu")) is False
    assert peak_memory_bytes(torch.device("cpu")) == 2000000 * 1024
    status.write_text("VmHWM:\t 1000 kB\nVmRSS:\t 1000 kB\n")
    assert reset_peak_memory(torch.device("cpu")) is True
