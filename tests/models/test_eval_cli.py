"""``hyperkd eval`` and ``hyperkd models`` through the real command-line entry point."""
import pytest
import torch

from hyperkd import cli, data, models
from hyperkd.commands.eval import evaluate


@pytest.fixture
def digits_checkpoint(tmp_path):
    path = tmp_path / "resnet20_digits.pt"
    torch.save({"state_dict": models.create("resnet20", num_classes=10).state_dict()}, path)
    return path


def eval_args(checkpoint, *extra):
    return ["eval", "--model", "resnet20", "--checkpoint", str(checkpoint), "--data", "digits",
            "--batch-size", "120", *extra]


def test_eval_prints_the_accuracy_of_the_saved_checkpoint(digits_checkpoint, capsys):
    assert cli.main(eval_args(digits_checkpoint)) == 0
    captured = capsys.readouterr()
    model = models.create("resnet20", num_classes=10, checkpoint=digits_checkpoint)
    _, _, test = data.loaders("digits", batch_size=360, augment=False)
    images, labels = next(iter(test))
    with torch.no_grad():
        ranked = model.eval()(images).topk(5, dim=1).indices
    top1 = 100 * (ranked[:, 0] == labels).float().mean().item()
    top5 = 100 * (ranked == labels[:, None]).any(1).float().mean().item()
    assert f"resnet20 on digits test (360 images): top-1 {top1:.2f}%  top-5 {top5:.2f}%" \
        in captured.out
    assert "eval: 100%" in captured.err  # the tqdm progress bar, on stderr


def test_evaluate_counts_top1_and_top5_hits():
    class Fixed(torch.nn.Module):
        """Ranks classes 0 > 1 > ... > 9 for every input."""

        def forward(self, x):
            return torch.arange(10, 0, -1, dtype=torch.float32).expand(len(x), 10)

    labels = torch.tensor([0, 4, 5, 9])  # top-1 hit, top-5 hit, miss, miss
    loader = [(torch.zeros(2, 3, 32, 32), labels[:2]), (torch.zeros(2, 3, 32, 32), labels[2:])]
    result = evaluate(Fixed(), loader, torch.device("cpu"), progress=False)
    assert result == {"top1": 25.0, "top5": 50.0, "images": 4}


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet21"], "unknown model 'resnet21'; did you mean"),
    (["--model", "resnet20", "--data", "cifar100", "--data-root", "/nonexistent"],
     "shape mismatch for fc.weight: checkpoint has (10, 64), model has (100, 64)"),
    (["--model", "resnet20", "--device", "toaster"], "--device: 'toaster' is not a torch device"),
])
def test_eval_errors_are_reported_cleanly(digits_checkpoint, capsys, argv, message):
    base = ["eval", "--checkpoint", str(digits_checkpoint), "--data", "digits"]
    assert cli.main(base + argv) == 2
    assert message in capsys.readouterr().err


def test_eval_with_a_missing_checkpoint_says_so(tmp_path, capsys):
    assert cli.main(eval_args(tmp_path / "absent.pt")) == 2
    assert "absent.pt does not exist" in capsys.readouterr().err


def test_models_lists_the_zoo_with_parameter_counts(capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert tuple(rows) == models.available()
    assert rows["resnet20"] == ["0.28", "278,324"]
    assert rows["repvgg_a2"] == ["26.94", "26,942,500"]


def test_models_counts_follow_num_classes(capsys):
    assert cli.main(["models", "--num-classes", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("resnet20 "))
    assert row.split()[1:] == ["0.27", "272,474"]
