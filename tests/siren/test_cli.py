"""`hyperkd siren`: argument errors exit with 2 and a message naming what is wrong."""
import pytest
import torch

from hyperkd import cli, data, models
from hyperkd.siren import analysis
from hyperkd.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("orig") / "best.pt"
    torch.manual_seed(0)
    save_checkpoint(path, {"model": models.create("resnet20", 10).state_dict()})
    return path


def run(capsys, *argv):
    code = cli.main(["siren", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["progressive", "--epochs", "1", "--rounds", "0"], "rounds: expected an integer ≥ 1"),
    (["decouple", "--epochs", "1", "--from", "x.pt"], "--teacher-checkpoint"),
    (["reconstruct"], "epochs"),
    (["analyse"], "--from"),
])
def test_bad_arguments_are_rejected_with_a_message(capsys, checkpoint, tmp_path, argv, message):
    code, err = run(capsys, *argv[:1], "--model", "resnet20", "--checkpoint", str(checkpoint),
                    "--out", str(tmp_path), *argv[1:])
    assert code == 2 and message in err


def test_unknown_model_is_rejected(capsys, checkpoint, tmp_path):
    code, err = run(capsys, "reconstruct", "--model", "resnet21", "--checkpoint", str(checkpoint),
                    "--out", str(tmp_path), "--epochs", "1")
    assert code == 2 and "unknown model 'resnet21'" in err


@pytest.mark.parametrize("encoding,lr", [("siren", 3e-4), ("nern", 1e-3)])
def test_reconstruction_default_lr_per_encoding(capsys, checkpoint, tmp_path, encoding, lr):
    """Without --lr, reconstruct trains at the encoding's measured default (docs/siren.md)."""
    import json
    code, _ = run(capsys, "reconstruct", "--model", "resnet20", "--checkpoint", str(checkpoint),
                  "--out", str(tmp_path), "--epochs", "1", "--encoding", encoding, "--width", "8",
                  "--depth", "2", "--kernel-batch", "64", "--batch-size", "2000")
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert code == 0 and record["lr"] == pytest.approx(lr)


def test_decouple_default_lr(capsys, checkpoint, tmp_path):
    """Without --lr, decouple trains at phases.DECOUPLE_LR (2e-6; 1e-4 killed the decoded net)."""
    import json
    code, _ = run(capsys, "reconstruct", "--model", "resnet20", "--checkpoint", str(checkpoint),
                  "--out", str(tmp_path / "p1"), "--epochs", "1", "--width", "8", "--depth", "2",
                  "--kernel-batch", "64", "--batch-size", "2000")
    assert code == 0
    code, _ = run(capsys, "decouple", "--model", "resnet20", "--checkpoint", str(checkpoint),
                  "--out", str(tmp_path / "p2"), "--epochs", "1", "--width", "8", "--depth", "2",
                  "--batch-size", "2000", "--from", str(tmp_path / "p1" / "best.pt"),
                  "--teacher-checkpoint", str(checkpoint), "--noise")
    record = json.loads((tmp_path / "p2" / "metrics.jsonl").read_text().splitlines()[0])
    assert code == 0 and record["lr"] == pytest.approx(2e-6)


TINY = ["--width", "8", "--depth", "2", "--batch-size", "2000"]


@pytest.fixture(scope="module")
def phase1(checkpoint, tmp_path_factory):
    """A one-epoch reconstruction whose flags come from a --config file (the command line's
    --depth wins over the file's): the predictor checkpoint the other phases start from."""
    import yaml
    folder = tmp_path_factory.mktemp("p1")
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({"model": "resnet20", "checkpoint": str(checkpoint), "epochs": 1,
                                      "width": 8, "depth": 3, "kernel-batch": 64, "batch-size": 2000}))
    code = cli.main(["siren", "reconstruct", "--config", str(config), "--depth", "2", "--out", str(folder / "out")])
    return code, folder / "out"


def test_reconstruct_takes_its_flags_from_a_config_file(phase1):
    import yaml
    code, out = phase1
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert code == 0 and (out / "best.pt").is_file()
    assert (saved["phase"], saved["model"], saved["epochs"], saved["width"], saved["depth"],
            saved["kernel-batch"]) == ("reconstruct", "resnet20", 1, 8, 2, 64)


def test_analyse_writes_the_s_ratios_and_the_interpolation_curve(capsys, checkpoint, phase1, tmp_path):
    import json
    code, err = run(capsys, "analyse", "--model", "resnet20", "--checkpoint", str(checkpoint),
                    "--out", str(tmp_path), "--from", str(phase1[1] / "best.pt"), *TINY)
    assert code == 0, err
    record = json.loads((tmp_path / "analysis.json").read_text())
    original = models.create("resnet20", 10, checkpoint).eval()
    assert [tuple(r) for r in record["s_ratio"]["original"]] == analysis.s_ratios(original)
    names = [name for name, _ in record["s_ratio"]["original"]]
    assert names and [name for name, _ in record["s_ratio"]["reconstructed"]] == names
    assert record["s_ratio"]["reconstructed"] != record["s_ratio"]["original"]
    # From w_o (α = 0: the original's accuracy, distance 0) to the decoded net (α = 1).
    curve = record["interpolation"]
    assert [p["alpha"] for p in curve] == pytest.approx([i / 10 for i in range(11)])
    test_set = data.loaders("digits", 2000, seed=0, augment=False)[2]
    assert curve[0]["distance"] == 0 and curve[0]["accuracy"] == analysis.accuracy(original, test_set)
    assert all(a["distance"] < b["distance"] for a, b in zip(curve, curve[1:]))
    assert (tmp_path / "s_ratio.png").stat().st_size > 0 and (tmp_path / "interpolation.png").stat().st_size > 0


def test_progressive_trains_rounds_and_prints_their_history(capsys, checkpoint, tmp_path):
    import json
    code = cli.main(["siren", "progressive", "--model", "resnet20", "--checkpoint", str(checkpoint),
                     "--out", str(tmp_path), "--epochs", "1", "--rounds", "2", "--kernel-batch", "64", *TINY])
    history = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and 1 <= len(history) <= 2
    assert [r["round"] for r in history] == list(range(1, len(history) + 1))
    assert all((tmp_path / f"round{r['round']}" / "best.pt").is_file() for r in history)
    # A round goes on only after a kept one; the last one shown ends the run unless all ran.
    assert all(r["kept"] for r in history[:-1])
    assert len(history) == 2 or not history[-1]["kept"]
