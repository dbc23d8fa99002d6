"""Checkpoint files: accepted layouts, strict round trips and the errors for everything else."""
import pytest
import torch

from hyperkd import models

INPUT = torch.linspace(-2, 2, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)


@pytest.fixture
def trained(randomized_bn):
    """A resnet20 with non-trivial BN statistics, standing in for a trained checkpoint."""
    return randomized_bn(models.create("resnet20")).eval()


def outputs(model):
    with torch.no_grad():
        return model.eval()(INPUT)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 200, "best_acc1": 68.8},
    lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {f"module.{key}": value for key, value in sd.items()},
    lambda sd: {"state_dict": {f"module.{key}": value for key, value in sd.items()}},
], ids=["raw", "state_dict", "model", "data_parallel", "wrapped_data_parallel"])
def test_saved_checkpoint_loads_strictly_with_identical_outputs(tmp_path, trained, wrap):
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(trained.state_dict()), path)
    loaded = models.create("resnet20", checkpoint=path)
    assert torch.equal(outputs(loaded), outputs(trained))
    assert torch.equal(loaded.bn1.running_var, trained.bn1.running_var)


def test_read_state_dict_strips_prefix_and_returns_tensors(tmp_path, trained):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in trained.state_dict().items()}}, path)
    assert list(models.read_state_dict(path)) == list(trained.state_dict())


def test_missing_and_unexpected_keys_are_named(tmp_path, trained):
    state_dict = trained.state_dict()
    del state_dict["fc.bias"]
    state_dict["head.weight"] = torch.zeros(3)
    torch.save(state_dict, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError) as err:
        models.create("resnet20", checkpoint=tmp_path / "ckpt.pt")
    message = str(err.value)
    assert "does not fit resnet20" in message
    assert "missing keys (1): fc.bias" in message
    assert "unexpected keys (1): head.weight" in message


def test_long_key_lists_are_cut_with_a_count(tmp_path, trained):
    torch.save(trained.state_dict(), tmp_path / "resnet20.pt")
    with pytest.raises(ValueError, match=r"missing keys \(72\): layer1\.3\.conv1\.weight, .*"
                                         r"\.\.\. and 62 more"):
        models.create("resnet32", checkpoint=tmp_path / "resnet20.pt")


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    torch.save(models.create("resnet20", num_classes=10).state_dict(), tmp_path / "c10.pt")
    with pytest.raises(ValueError) as err:
        models.create("resnet20", num_classes=100, checkpoint=tmp_path / "c10.pt")
    message = str(err.value)
    assert "shape mismatch for fc.weight: checkpoint has (10, 64), model has (100, 64)" in message
    assert "shape mismatch for fc.bias: checkpoint has (10,), model has (100,)" in message
    assert "missing" not in message


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        models.create("resnet20", checkpoint=tmp_path / "nope.pt")


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n")
    with pytest.raises(ValueError, match="notes.txt is not a PyTorch checkpoint"):
        models.create("resnet20", checkpoint=path)


@pytest.mark.parametrize("content, found", [
    ({"epoch": 3, "acc": 0.5}, "a dict with keys acc, epoch"),
    ([torch.zeros(2)], "a list"),
    ({"state_dict": {}}, "a dict with keys state_dict"),
])
def test_a_checkpoint_without_a_state_dict_says_what_it_holds(tmp_path, content, found):
    torch.save(content, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=f"holds {found}, not a state_dict"):
        models.create("resnet20", checkpoint=tmp_path / "ckpt.pt")


class _Payload:
    """Unpickling this with full pickle would create a directory: proof that code ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os
        return os.makedirs, (self.target,)


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"fc.weight": torch.zeros(1), "evil": _Payload(str(marker))}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        models.create("resnet20", checkpoint=tmp_path / "ckpt.pt")
    assert not marker.exists()


def test_a_whole_pickled_model_gets_a_hint_to_save_its_state_dict(tmp_path, trained):
    torch.save(trained, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"re-save model\.state_dict\(\)"):
        models.create("resnet20", checkpoint=tmp_path / "model.pt")


def test_load_checkpoint_fills_an_existing_model(tmp_path, trained):
    torch.save(trained.state_dict(), tmp_path / "ckpt.pt")
    model = models.create("resnet20")
    assert models.load_checkpoint(model, tmp_path / "ckpt.pt") is model
    assert torch.equal(outputs(model), outputs(trained))


def test_checkpoint_path_may_start_with_home(tmp_path, monkeypatch, trained):
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save(trained.state_dict(), tmp_path / "ckpt.pt")
    assert torch.equal(outputs(models.create("resnet20", checkpoint="~/ckpt.pt")), outputs(trained))
