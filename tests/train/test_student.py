"""`hyperkd train` (Algorithm 1) end to end on a cut of digits: every registered KD method, exact
resume with the fused step, evaluation of the hypernetised checkpoint, and argument errors."""
import json
import math

import pytest
import torch

from hyperkd import kd, models
from hyperkd.cli import main
from hyperkd.commands.eval import load_model
from hyperkd.train.loop import Trainer
from hyperkd.train.student import StudentConfig, train_student
from hyperkd.train.teacher import train_teacher

VOLATILE = ("epoch_time_s", "peak_memory_bytes")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A resnet20 teacher trained one epoch on full digits (module-scoped: built once)."""
    out = tmp_path_factory.mktemp("teacher")
    train_teacher("resnet20", "digits", out, epochs=1, batch_size=128, lr=0.05, progress=False)
    return out / "best.pt"


def student(teacher, **overrides):
    base = dict(model="resnet20", data="digits", teacher=teacher, hidden=(4, 4, 8), epochs=1,
                batch_size=32, ft_epochs=1, kd_weight=1.0 / 32)
    return StudentConfig(**{**base, **overrides})


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(kd.methods()))
def test_every_registered_method_trains_with_finite_per_layer_terms(tiny_digits, teacher, tmp_path, method):
    # Adam bounds every step whatever the method's scale (FSP's and FitNets' sums make plain SGD
    # diverge within steps, which the NaN stop reports: see docs/training.md, "The loss").
    best = train_student(student(teacher, kd=method, optimizer="adam", lr=1e-3), tmp_path, progress=False)
    (record,) = records(tmp_path)
    assert best["epoch"] == 0 and 0.0 <= best["test_acc"] <= 1.0
    assert math.isfinite(record["loss"]) and math.isfinite(record["ce"])
    terms = {k: v for k, v in record.items() if k.startswith("kd/")}
    if method == "none":
        assert not terms and "lambdas" not in record
    else:
        assert terms and all(math.isfinite(v) for v in terms.values())
        assert len(record["lambdas"]) == len(terms)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["test_acc"] == best["test_acc"]


def test_resume_with_the_fused_step_matches_an_uninterrupted_run(tiny_digits, teacher, tmp_path, monkeypatch):
    cfg = student(teacher, kd="at0", fused_step=True, epochs=3, optimizer="adam", lr=1e-3)
    train_student(cfg, tmp_path / "straight", progress=False)
    train_epoch = Trainer.train_epoch

    def killed_in_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_student(cfg, tmp_path / "killed", progress=False)
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    train_student(cfg, tmp_path / "killed", resume=True, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in VOLATILE} for r in rs]
    assert strip(records(tmp_path / "killed")) == strip(records(tmp_path / "straight"))
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for x, y in zip(a["optimizer"]["fused"]["state"], b["optimizer"]["fused"]["state"]):
        assert torch.equal(x, y)


def test_eval_materializes_a_hypernetised_checkpoint(tiny_digits, teacher, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--no-kd", "--hidden", "4,8", "--epochs", "1",
                 "--batch-size", "32", "--out", str(out)]) == 0
    assert (out / "config.yaml").exists() and (out / "summary.json").exists()
    state = torch.load(out / "best.pt", weights_only=True)["model"]
    net = load_model("resnet20", out / "best.pt", 10, gamma=0.25)
    assert type(net) is type(models.create("resnet20", num_classes=10))
    # The materialised weights are θ0 + W z(γ) + b, not the primary net's stale copies.
    assert not torch.equal(net.conv1.weight, state["primary.conv1.weight"])
    capsys.readouterr()
    assert main(["eval", "--model", "resnet20", "--checkpoint", str(out / "best.pt"), "--data", "digits",
                 "--gamma", "0.25"]) == 0
    assert "top-1" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--model", "resnet21", "--no-kd"], "unknown model 'resnet21'; did you mean"),
    (["--model", "resnet20", "--kd", "atx", "--teacher", "{teacher}"], "unknown KD method 'atx'"),
    (["--model", "resnet20", "--kd", "at0", "--teacher", "{missing}"], "teacher: no checkpoint at"),
    (["--model", "resnet20", "--kd", "at0"], "teacher: --kd at0 needs a teacher checkpoint"),
    (["--model", "resnet20", "--no-kd", "--data", "cifar10", "--data-root", "{missing}"], "cifar10 not found under"),
    (["--model", "resnet20", "--no-kd", "--gamma", "2"], "gamma: expected 'uniform' or a number in [0, 1]"),
])
def test_train_argument_errors_name_the_argument(tmp_path, teacher, capsys, argv, message):
    argv = [a.format(teacher=teacher, missing=tmp_path / "nothing") for a in argv]
    assert main(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_with_the_fused_step_trains_with_finite_terms(tiny_digits, teacher, tmp_path, amp):
    train_student(student(teacher, kd="at0", amp=amp, fused_step=True, epochs=2), tmp_path, progress=False)
    for record in records(tmp_path):
        assert all(math.isfinite(v) for k, v in record.items() if k == "loss" or k.startswith("kd/"))
    if amp == "fp16":  # the loss scaler's state travels with the checkpoint, for an exact resume
        assert torch.load(tmp_path / "last.pt", weights_only=True)["scaler"]["scale"] > 0
