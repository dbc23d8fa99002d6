"""`hyperkd train` (Algorithm 1) on a cut of digits: every registered KD method's step and how its
loss is composed, a few methods end to end, exact resume with the fused step, evaluation of the
hypernetised checkpoint, and argument errors."""
import json
import math

import pytest
import torch

from hyperkd import kd, models
from hyperkd.cli import main
from hyperkd.commands.eval import load_model
from hyperkd.train.loop import Trainer
from hyperkd.hyper import hypernetize
from hyperkd.train.step import DistillStep, KDTerm
from hyperkd.train.student import StudentConfig, _layer_kd, train_student
from tests.tolerances import assert_close
from tests.train.test_distill_step import assert_composed

VOLATILE = ("epoch_time_s", "peak_memory_bytes")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An untrained resnet20 teacher checkpoint: KD needs its features, not its accuracy."""
    path = tmp_path_factory.mktemp("teacher") / "best.pt"
    torch.manual_seed(0)
    torch.save({"model": models.create("resnet20", num_classes=10).state_dict()}, path)
    return path


def student(teacher, **overrides):
    base = dict(model="resnet20", data="digits", teacher=teacher, hidden=(4, 4, 8), epochs=1,
                batch_size=32, ft_epochs=1, kd_weight=1.0 / 32)
    return StudentConfig(**{**base, **overrides})


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _step(method, teacher, kd_weight=0.5, lambda0=0.1):
    """One DistillStep of the hypernetised resnet20 for ``method``, built as train_student builds it."""
    torch.manual_seed(0)
    cfg = student(teacher, kd=method, kd_weight=kd_weight, lambda0=lambda0)
    batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    net = hypernetize(models.create("resnet20", num_classes=10), hidden=(4, 4, 8))
    t = models.create("resnet20", num_classes=10, checkpoint=teacher).eval().requires_grad_(False)
    (spec,) = cfg.terms()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*batch), batch_size=8)
    layerkd = _layer_kd(cfg, spec, net.primary, t, loader)
    step = DistillStep(net, t, [KDTerm(spec.label, layerkd, kd_weight)], epochs=3, lambda0=lambda0, generate=True)
    step.bind_shapes(batch[0][:2])
    return step, layerkd, batch


@pytest.mark.parametrize("method", sorted(set(kd.methods()) - {"none"}))
def test_every_registered_method_composes_the_loss_of_a_step(teacher, method):
    step, layerkd, (x, y) = _step(method, teacher)
    out = step(x, y, epoch=1)
    label = method
    per_layer = torch.stack([v for k, v in out.terms.items() if k.startswith(f"kd/{label}/")])
    lambdas = torch.tensor(layerkd.lambdas(1, 3), dtype=per_layer.dtype)
    assert len(per_layer) == len(lambdas) == len(layerkd.term_names()) > 0
    assert torch.isfinite(per_layer).all() and torch.isfinite(out.loss)
    # kd = β Σ_m λ_m kd_m, loss = λ0 ce + kd (what the log records, step by step)
    assert_close(out.terms[f"kd/{label}"], 0.5 * (lambdas * per_layer).sum(), torch.float32)
    assert_close(out.loss.detach(), 0.1 * out.terms["ce"] + out.terms[f"kd/{label}"], torch.float32)
    out.loss.backward()
    assert step.student.hypernet.W.grad is not None and step.student.hypernet.W.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["at0", "ab", "fitnets"])
def test_the_kd_weight_is_folded_into_the_fused_gradients(teacher, method):
    grads = {}
    for beta in (1.0, 0.25):
        step, _, (x, y) = _step(method, teacher, kd_weight=beta, lambda0=0.0)
        out = step(x, y, epoch=0)
        out.loss.backward()
        grads[beta] = (out.terms[f"kd/{method}"], step.student.hypernet.W.grad.clone())
    assert_close(grads[0.25][0], 0.25 * grads[1.0][0], torch.float32)
    assert_close(grads[0.25][1], 0.25 * grads[1.0][1], torch.float32)


@pytest.mark.parametrize("method", ["none", "at0", "ab", "ft"])
def test_methods_train_end_to_end_with_the_logged_loss_composed(tiny_digits, teacher, tmp_path, method):
    # Adam bounds every step whatever the method's scale.
    best = train_student(student(teacher, kd=method, optimizer="adam", lr=1e-3), tmp_path, progress=False)
    (record,) = records(tmp_path)
    assert best["epoch"] == 0 and 0.0 <= best["test_acc"] <= 1.0
    assert math.isfinite(record["loss"]) and math.isfinite(record["ce"])
    if method == "none":
        assert not [k for k in record if k.startswith("kd/")] and "lambdas" not in record
        assert record["loss"] == pytest.approx(record["ce"], rel=1e-9)
    else:
        assert_composed(record, 0.1, {method: 1.0 / 32})
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
