"""The distillation step (`DistillStep`) and `train_student` on any teacher–student pair: plain
and hypernetised students, penultimate/logit taps, several KD terms, how the loss is composed,
one host copy per step, pinned losses of the default path, and the errors a user can cause."""
import json
import math
import sys

import pytest
import torch

from hyperkd import models
from hyperkd.cli import main
from hyperkd.train.loop import Trainer
from hyperkd.train.student import StudentConfig, train_student


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Untrained teacher checkpoints (KD needs only their features, not their accuracy)."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    for name in ("resnet20", "resnet56", "vgg13_bn"):
        torch.manual_seed(0)
        paths[name] = folder / f"{name}.pt"
        torch.save({"model": models.create(name, num_classes=10).state_dict()}, paths[name])
    return paths


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train(argv, out):
    assert main(["train", *argv, "--epochs", "1", "--batch-size", "32", "--out", str(out)]) == 0
    (record,) = records(out)
    return record


def assert_composed(record, lambda0, weights):
    """loss = λ0·ce + Σ_k kd/<k>, and kd/<k> = w_k Σ_m λ_{k,m} kd/<k>/<layer> (epoch means are linear
    in the per-step values, and λ is constant within an epoch)."""
    kd = {k: v for k, v in record.items() if k.startswith("kd/") and k.count("/") == 1}
    assert sorted(kd) == sorted(f"kd/{label}" for label in weights)
    assert record["loss"] == pytest.approx(lambda0 * record["ce"] + sum(kd.values()), rel=1e-6)
    for label, weight in weights.items():
        layers = [v for k, v in record.items() if k.startswith(f"kd/{label}/")]
        lambdas = record["lambdas"][label]
        assert len(layers) == len(lambdas) > 0
        expected = weight * sum(lam * term for lam, term in zip(lambdas, layers))
        assert record[f"kd/{label}"] == pytest.approx(expected, rel=1e-5)


def test_plain_cross_architecture_student_with_sp_at_the_penultimate_features(tiny_digits, checkpoints, tmp_path):
    record = _train(["--teacher-model", "resnet56", "--teacher", str(checkpoints["resnet56"]), "--model", "resnet20",
                     "--hyper", "none", "--tap", "penultimate", "--kd", "sp"], tmp_path)
    assert list(k for k in record if k.startswith("kd/sp/")) == ["kd/sp/fc"]
    assert_composed(record, 0.1, {"sp": 1.0})
    state = torch.load(tmp_path / "best.pt", weights_only=True)["model"]
    assert "hypernet.W" not in state and "fc.weight" in state  # the plain student's own weights


def test_hypernetised_student_of_another_architecture_with_logit_kd_and_a_regressor(tiny_digits, checkpoints,
                                                                                      tmp_path):
    argv = ["--teacher-model", "vgg13_bn", "--teacher", str(checkpoints["vgg13_bn"]), "--model", "mobilenetv2_x0_5",
            "--hidden", "4,4,8", "--tap", "penultimate", "--kd", "logit:T=4"]
    with pytest.raises(ValueError, match=r"student feature \(2, 1280\) and teacher feature \(2, 512\) differ"):
        train_student(StudentConfig(model="mobilenetv2_x0_5", teacher_model="vgg13_bn",
                                    teacher=checkpoints["vgg13_bn"], hidden=(4, 4, 8), tap="penultimate",
                                    kd="logit:T=4", epochs=1), tmp_path / "refused", progress=False)
    record = _train(argv + ["--adapter", "1x1"], tmp_path / "run")
    assert_composed(record, 0.1, {"logit:T=4": 1.0})
    regressor = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["stateful"]["kd"]
    assert regressor["0.regressors.0.weight"].shape == (512, 1280)


def test_several_kd_terms_with_their_own_weights_and_taps(tiny_digits, checkpoints, tmp_path):
    record = _train(["--teacher", str(checkpoints["resnet20"]), "--model", "resnet20", "--hidden", "4,4,8",
                     "--kd", "at0@0.5", "--kd", "logit:T=4", "--kd-weight", "0.25", "--lambda0", "0.3"], tmp_path)
    assert_composed(record, 0.3, {"at0": 0.125, "logit:T=4": 0.25})
    assert len(record["lambdas"]["at0"]) == 21 and record["lambdas"]["logit:T=4"] == [1.0]
    assert "kd/logit:T=4/fc" in record and "kd/at0/conv1" in record


def test_the_driver_keeps_to_one_host_copy_per_step(tiny_digits, checkpoints, tmp_path, monkeypatch):
    copies, steps = [0], []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            # The fused losses' backward reads an incoming CPU gradient to skip a scaling pass: a
            # CPU tensor, never a device sync, so it is not counted.
            if sys._getframe(1).f_code.co_name != "_all_ones":
                copies[0] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    fit = Trainer.fit

    def counting_fit(self, epochs, **kwargs):
        loader = self.train_loader

        class Counted:  # marks each step's span, from its batch in hand to the next fetch
            def __getattr__(self, name):
                return getattr(loader, name)

            def __iter__(self):
                for batch in loader:  # augmentations read host tensors: not the step's
                    begin = copies[0]
                    yield batch
                    steps.append(copies[0] - begin)
        self.train_loader = Counted()
        return fit(self, epochs, **kwargs)
    monkeypatch.setattr(Trainer, "fit", counting_fit)
    cfg = StudentConfig(model="resnet20", teacher=checkpoints["resnet20"], kd=["at0", "ab"], hidden=(4, 4, 8),
                        epochs=1, batch_size=32, fused_step=True)
    train_student(cfg, tmp_path, progress=False)
    assert steps == [1, 1, 1]  # 96 images, batch 32


# The default path (same architecture, hypernetised, AT-0, fused step) on a fixed seed. Any change
# in what a step computes moves these; the tolerance covers the order in which a vector width sums.
PINNED = {"at0": [0.357590, 0.330045], "none": [2.415175, 2.302341]}


@pytest.mark.parametrize("method", sorted(PINNED))
def test_pinned_losses_of_the_default_path(tiny_digits, checkpoints, tmp_path, method):
    cfg = StudentConfig(model="resnet20", teacher=checkpoints["resnet20"], kd=method, hidden=(4, 4, 8),
                        epochs=2, batch_size=32, kd_weight=1 / 32, fused_step=True, seed=0)
    train_student(cfg, tmp_path, progress=False)
    assert [r["loss"] for r in records(tmp_path)] == pytest.approx(PINNED[method], rel=2e-4)


@pytest.mark.parametrize("overrides, message", [
    (dict(tap="convs"), r"tap: expected one of auto, conv, bn, penultimate, logits, crucial, got 'convs'"),
    (dict(pairs=("layer1.0.conv1",)), r"pair: expected student.module=teacher.module"),
    (dict(pairs=("layer1.9.conv1=layer1.0.conv1",)), r"student: CifarResNet has no module named 'layer1.9.conv1' to tap; close names: layer1.2.conv1"),
    (dict(kd="at0@-1"), r"kd: the weight after '@' in 'at0@-1' must be a number >= 0"),
    (dict(kd="at0/penult"), r"tap: unknown tap 'penult'; valid taps are .*did you mean penultimate"),
    (dict(kd=["at0", "at0"]), r"kd: a method is given twice"),
    (dict(hyper="none", fused_step=True), r"hyper: --fused-step, --state-dtype and --weight-dtype act on"),
    (dict(teacher_model="resnet32"), r"does not fit resnet32: .*missing"),
])
def test_bad_settings_are_named(tiny_digits, checkpoints, tmp_path, overrides, message):
    cfg = StudentConfig(model="resnet20", teacher=checkpoints["resnet20"], hidden=(4, 4, 8), epochs=1, **overrides)
    with pytest.raises(ValueError, match=message):
        train_student(cfg, tmp_path, progress=False)


def test_pairs_with_different_shapes_are_refused_before_training(tiny_digits, checkpoints, tmp_path):
    cfg = StudentConfig(model="resnet20", teacher=checkpoints["resnet20"], hidden=(4, 4, 8), epochs=1,
                        pairs=("conv1=layer3.0.conv1",))
    with pytest.raises(ValueError, match=r"layer 'conv1=layer3.0.conv1': student feature \(2, 16, 32, 32\) and "
                                         r"teacher feature \(2, 64, 8, 8\) differ in shape"):
        train_student(cfg, tmp_path, progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_nan_stop_names_the_term_and_layer(tiny_digits, checkpoints, tmp_path):
    cfg = StudentConfig(model="resnet20", teacher=checkpoints["resnet20"], hidden=(4, 4, 8), epochs=1,
                        kd="at0@1e39", hyper="none")
    with pytest.raises(FloatingPointError, match=r"loss term 'kd/at0' is (inf|nan) at epoch 0, step 0"):
        train_student(cfg, tmp_path, progress=False)


def test_gnorp_weights_each_term_and_logs_its_lambda_and_ratio(tiny_digits, checkpoints, tmp_path):
    record = _train(["--teacher", str(checkpoints["resnet20"]), "--model", "resnet20", "--hyper", "none",
                     "--kd", "makd:aff=cs,norm=l2,loss=sl1", "--kd-weight", "gnorp:r=2"], tmp_path)
    label = "makd:aff=cs,norm=l2,loss=sl1"
    lam, ratio = record[f"gnorp/{label}/lambda"], record[f"gnorp/{label}/ratio"]
    assert lam > 0 and ratio > 0
    # The term is weighted by λ (Adam at lr 1e-3 moves ℓ by ~1e-3 a step, so the epoch's λ is
    # nearly constant): kd = λ · L on the epoch means.
    assert record[f"kd/{label}"] == pytest.approx(lam * record[f"kd/{label}/fc"], rel=1e-2)
    state = torch.load(tmp_path / "last.pt", weights_only=True)["stateful"]["kd_weights"]
    assert "0.log_weight" in state
    assert record["loss"] == pytest.approx(0.1 * record["ce"] + record[f"kd/{label}"], rel=1e-6)


def test_layerwise_rates_from_the_jsd_of_attention_maps(tiny_digits, tmp_path):
    torch.manual_seed(0)
    teacher = tmp_path / "resnet18.pt"
    torch.save({"model": models.create("resnet18_x0_25", num_classes=10).state_dict()}, teacher)
    assert main(["train", "--teacher-model", "resnet18_x0_25", "--teacher", str(teacher), "--model", "resnet10_x0_25",
                 "--hyper", "none", "--kd", "jsd:map=attention", "--layer-lr", "jsd", "--layer-lr-every", "1",
                 "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--out", str(tmp_path / "run")]) == 0
    first, second = records(tmp_path / "run")
    assert "layer_lr" not in first  # epoch 0's divergences close when epoch 1 starts
    divergence, rates = second["layer_divergence"], second["layer_lr"]
    assert len(divergence) == len(rates) == 4  # stem and the first conv of stages 2-4
    assert all(0 <= d <= math.log(2) for d in divergence.values())
    assert all(r != 0.05 for r in rates.values())  # updated after every epoch
    for layer, d in divergence.items():
        assert d == pytest.approx(first[f"kd/jsd:map=attention/{layer}"], rel=1e-5)


def test_layerwise_rates_need_one_jsd_term_and_a_plain_student(checkpoints, tmp_path):
    cfg = StudentConfig(model="resnet20", teacher=checkpoints["resnet20"], kd="at0", layer_lr="jsd", epochs=1)
    with pytest.raises(ValueError, match="layer_lr: --layer-lr jsd sets the rates"):
        train_student(cfg, tmp_path, progress=False)


def test_training_flags_change_what_they_name(tiny_digits, checkpoints, tmp_path):
    flags = ["--teacher", str(checkpoints["resnet20"]), "--model", "resnet20", "--hidden", "4,4,8", "--kd", "at0",
             "--fused-step", "--channels-last", "--grad-norm", "--debug", "--schedule", "spike",
             "--lr-schedule", "multistep", "--epochs", "2", "--batch-size", "32", "--lr", "0.05"]
    assert main(["train", *flags, "--gamma", "0.5", "--out", str(tmp_path / "fixed")]) == 0
    assert main(["train", *flags, "--out", str(tmp_path / "drawn")]) == 0
    fixed, drawn = records(tmp_path / "fixed"), records(tmp_path / "drawn")
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in fixed)
    first, last = (r["lambdas"]["at0"] for r in fixed)
    assert max(first) / min(first) > 1.5 and first.index(max(first)) == 0  # the spike starts at layer 0
    assert last.index(max(last)) == len(last) - 1  # and ends at the last layer
    assert [r["lr"] for r in fixed] == pytest.approx([0.05, 0.005])  # multistep: ×0.1 after epoch 0
    assert fixed[0]["loss"] != drawn[0]["loss"]  # a fixed γ trains other weights than drawn ones
