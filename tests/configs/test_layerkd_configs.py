"""The reproduction configs of configs/layerkd/ load through ``hyperkd sweep --config`` and every
row (KD method, and the No-KD baseline) runs two training steps on digits with a tiny hypernetwork,
so that no config rots when a flag or a method changes."""
import functools
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from hyperkd import data, models
from hyperkd.cli import parse_args
from hyperkd.commands.train import student_config
from hyperkd.train import sweep
from hyperkd.train.student import train_student

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "layerkd").glob("*.yaml"))
TABLE1_METHODS = {"none", "ab", "at0", "at1:p=2", "at1:p=4", "at2:p=2", "at2:p=4", "cwd", "fsp", "ft", "fitnets",
                  "jacobian", "rkd-a", "rkd-d", "rkd-da", "sp"}
TABLE2_MODELS = {"shufflenetv2_x0_5", "shufflenetv2_x1_5", "resnet20", "resnet56", "mobilenetv2_x0_5",
                 "mobilenetv2_x1_4", "vgg11_bn", "vgg19_bn", "repvgg_a0", "repvgg_a2"}


def _args(config, teacher=None, out=Path("unused")):
    """The sweep's flags from ``config``; the tiny overrides come as flags, which win."""
    argv = ["sweep", "--config", str(config), "--out", str(out)]
    if teacher is not None:
        argv += ["--data", "digits", "--teacher", str(teacher), "--hidden", "2", "--epochs", "1",
                 "--batch-size", "2", "--ft-epochs", "1"]
    return parse_args(argv)


def test_the_configs_cover_both_tables():
    names = [c.stem for c in CONFIGS]
    assert sorted(n for n in names if n.startswith("table1-")) == [
        "table1-spike-h16-64-128", "table1-uniform-h16-16-16", "table1-uniform-h16-64-128"]
    assert {_args(c).model for c in CONFIGS if c.stem.startswith("table2-")} == TABLE2_MODELS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_config_holds_the_papers_settings(config):
    args = _args(config)
    assert (args.data, args.epochs, args.batch_size, args.lambda0, args.kd_weight) == ("cifar100", 40, 16, 0.1, 1.0)
    assert args.teacher == Path(f"teachers/cifar100_{args.model}.pt")
    methods = set(sweep.parse_methods(args.methods))
    if config.stem.startswith("table1-"):
        assert args.model == "shufflenetv2_x0_5" and methods == TABLE1_METHODS
        assert (args.schedule, args.hidden) == {"table1-spike-h16-64-128": ("spike", (16, 64, 128)),
                                                "table1-uniform-h16-64-128": ("uniform", (16, 64, 128)),
                                                "table1-uniform-h16-16-16": ("uniform", (16, 16, 16))}[config.stem]
    else:
        assert methods == {"none", "ab", "at0"} and (args.schedule, args.hidden) == ("spike", (16, 64, 128))


DIGITS_LOADERS = data.loaders  # the real one: the slow test replaces data.loaders


@functools.lru_cache(maxsize=None)
def _digits():
    """The first four training digits, two validation and two test digits (loaded once)."""
    train, val, test = DIGITS_LOADERS("digits", 2)
    return tuple(Subset(loader.dataset, range(n)) for loader, n in ((train, 4), (val, 2), (test, 2)))


def _tiny_loaders(monkeypatch):
    """Two training batches of two digits, one batch each for validation and test."""
    def loaders(name, batch_size, **kwargs):
        return tuple(DataLoader(subset, batch_size=2, shuffle=False, generator=torch.Generator().manual_seed(0))
                     for subset in _digits())

    monkeypatch.setattr(data, "loaders", loaders)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_every_row_is_a_valid_run(config, tmp_path):
    teacher = tmp_path / "teacher.pt"
    teacher.touch()
    args = _args(config, teacher, tmp_path / "sweep")
    for method in sweep.parse_methods(args.methods):
        student_config(args, kd=method, seed=0).check()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_every_row_runs_two_steps_on_digits(config, tmp_path, monkeypatch):
    _tiny_loaders(monkeypatch)
    model = _args(config).model
    teacher = tmp_path / "teacher.pt"
    torch.save(models.create(model, num_classes=10).state_dict(), teacher)
    args = _args(config, teacher, tmp_path / "sweep")
    for method in sweep.parse_methods(args.methods):
        cfg = student_config(args, kd=method, seed=0)
        cfg.check()
        run = sweep.run_dir(args.out, method, 0)
        summary = train_student(cfg, run, progress=False)
        assert summary["epoch"] == 0 and 0.0 <= summary["test_acc"] <= 1.0, (method, summary)
        shutil.rmtree(run)  # a large model's checkpoints are ~1 GB a row: keep the test's peak on disk to one row
