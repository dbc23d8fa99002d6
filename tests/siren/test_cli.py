"""`hyperkd siren`: argument errors exit with 2 and a message naming what is wrong."""
import pytest
import torch

from hyperkd import cli, models
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
