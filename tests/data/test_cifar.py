"""CIFAR from a local folder: a tiny copy in the real pickle layout, written by the tests."""
import hashlib
import pickle

import numpy as np
import pytest
import torch

from hyperkd import cli, data, models
from hyperkd.data import cifar

TRAIN_COUNT, TEST_COUNT = 20, 10


def pixel_planes(count: int, offset: int) -> np.ndarray:
    """Rows of 3072 bytes (R, G, B planes, row-major) whose value encodes image, channel, column."""
    image = np.arange(count)[:, None, None, None]
    channel = np.arange(3)[None, :, None, None]
    column = np.arange(32)[None, None, None, :]
    planes = (offset + 7 * image + 40 * channel + 2 * column) * np.ones((1, 1, 32, 1), np.int64)
    return planes.astype(np.uint8).reshape(count, 3072)


def expected_image(name: str, row: np.ndarray) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in cifar.MEAN_STD[name])
    return (torch.from_numpy(row.reshape(3, 32, 32)).float() / 255 - mean) / std


def write_cifar(root, name, test_labels=None):
    """Write a tiny ``name`` folder as the CIFAR tarball unpacks; return test rows and labels."""
    classes = cifar.NUM_CLASSES[name]
    cls = cifar.TORCHVISION_CLASSES[name]
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    train_files = [entry[0] for entry in cls.train_list]
    per_file = TRAIN_COUNT // len(train_files)
    batches = {file: (pixel_planes(per_file, 5 * i),
                      [(3 * i + j) % classes for j in range(per_file)])
               for i, file in enumerate(train_files)}
    test_rows = pixel_planes(TEST_COUNT, 1)
    test_labels = test_labels or [(5 * j + 2) % classes for j in range(TEST_COUNT)]
    batches[cls.test_list[0][0]] = (test_rows, test_labels)
    for file, (rows, labels) in batches.items():
        entry = {"batch_label": file, "data": rows, label_key: labels,
                 "filenames": [f"img_{j}.png" for j in range(len(labels))]}
        if name == "cifar100":
            entry["coarse_labels"] = [label // 5 for label in labels]
        (folder / file).write_bytes(pickle.dumps(entry, protocol=2))
    names = [f"class_{c}" for c in range(classes)]
    meta = {"label_names": names} if name == "cifar10" else \
        {"fine_label_names": names, "coarse_label_names": [f"super_{c}" for c in range(20)]}
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps(meta, protocol=2))
    return test_rows, test_labels


def accept_checksums(monkeypatch, root, name):
    """torchvision verifies the real files' MD5s; teach it the tiny copy's instead."""
    cls = cifar.TORCHVISION_CLASSES[name]

    def md5(file):
        return hashlib.md5((root / cls.base_folder / file).read_bytes()).hexdigest()

    for attr in ("train_list", "test_list"):
        monkeypatch.setattr(cls, attr, [[file, md5(file)] for file, _ in getattr(cls, attr)])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})


@pytest.fixture(params=["cifar10", "cifar100"])
def tiny(request, tmp_path, monkeypatch):
    name = request.param
    rows, labels = write_cifar(tmp_path, name)
    accept_checksums(monkeypatch, tmp_path, name)
    return name, tmp_path, rows, labels


def test_tiny_folder_reads_into_train_val_test(tiny):
    name, root, rows, labels = tiny
    train, val, test = data.splits(name, root=root, augment=False)
    assert (len(train), len(val), len(test)) == (18, 2, 10)
    assert sorted(train.indices + val.indices) == list(range(TRAIN_COUNT))
    for index in (0, 9):
        image, label = test[index]
        assert label == labels[index]
        torch.testing.assert_close(image, expected_image(name, rows[index]))


def test_validation_images_are_not_augmented(tiny):
    name, root, _, _ = tiny
    _, val, _ = data.splits(name, root=root, augment=True)
    _, plain_val, _ = data.splits(name, root=root, augment=False)
    assert all(torch.equal(val[i][0], plain_val[i][0]) for i in range(len(val)))


def test_training_images_get_crop_and_flip(tiny):
    name, root, _, _ = tiny
    train, _, _ = data.splits(name, root=root, augment=True)
    plain, _, _ = data.splits(name, root=root, augment=False)
    reference = plain[0][0]
    torch.manual_seed(0)
    draws = [train[0][0] for _ in range(60)]
    assert all(d.shape == (3, 32, 32) for d in draws)
    flipped = reference.flip(-1)
    # Columns encode their index, so a flip shows as a reversed row; a crop as shifted columns.
    assert any(torch.allclose(d[:, 8:24, 8:24], flipped[:, 8:24, 8:24]) for d in draws)
    assert sum(not torch.equal(d, reference) for d in draws) >= 40


def test_loaders_batch_the_tiny_folder(tiny):
    name, root, _, labels = tiny
    train, val, test = data.loaders(name, batch_size=4, root=root)
    images, _ = next(iter(train))
    assert images.shape == (4, 3, 32, 32)
    assert torch.cat([y for _, y in test]).tolist() == labels


def test_data_root_comes_from_the_environment(tiny, monkeypatch):
    name, root, _, labels = tiny
    monkeypatch.setenv(cifar.ROOT_ENV, str(root))
    assert data.splits(name)[2][3][1] == labels[3]


def test_the_data_set_folder_itself_is_accepted_as_root(tiny):
    name, root, _, labels = tiny
    folder = root / cifar.TORCHVISION_CLASSES[name].base_folder
    assert data.splits(name, root=folder)[2][3][1] == labels[3]


@pytest.mark.parametrize("name, files", [
    ("cifar100", ["cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]),
    ("cifar10", [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
     + ["cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"]),
])
def test_missing_folder_names_every_expected_file_and_where(tmp_path, name, files):
    with pytest.raises(FileNotFoundError) as err:
        data.loaders(name, batch_size=8, root=tmp_path / "data")
    message = str(err.value)
    assert f"missing {', '.join(files)}" in message
    for file in files:
        assert f"  {tmp_path / 'data' / file}\n" in message
    assert "--data-root" in message and cifar.ROOT_ENV in message and "never downloads" in message


def test_a_partly_copied_folder_names_only_the_missing_file(tmp_path):
    write_cifar(tmp_path, "cifar100")
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing cifar-100-python/meta\. Expected"):
        data.splits("cifar100", root=tmp_path)


def test_no_root_at_all_asks_for_one(monkeypatch):
    monkeypatch.delenv(cifar.ROOT_ENV, raising=False)
    with pytest.raises(ValueError, match=r"needs a data root: pass --data-root .*HYPERKD_DATA"):
        data.splits("cifar100")


def test_files_that_fail_the_integrity_check_are_reported(tmp_path):
    write_cifar(tmp_path, "cifar100")  # real MD5s expected: the tiny files cannot match
    with pytest.raises(ValueError, match="failed torchvision's integrity check"):
        data.splits("cifar100", root=tmp_path)


def test_train_val_split_is_45k_5k_fixed_by_the_seed():
    train, val = cifar.split_train_val(50_000)
    assert (len(train), len(val)) == (45_000, 5_000)
    assert not set(train) & set(val)
    assert cifar.split_train_val(50_000) == (train, val)
    assert cifar.split_train_val(50_000, seed=1)[1] != val


def test_eval_command_reports_accuracy_on_the_tiny_test_split(tmp_path, monkeypatch, capsys):
    model = models.create("resnet20").eval()
    torch.save(model.state_dict(), tmp_path / "resnet20.pt")
    images = torch.stack([expected_image("cifar100", row) for row in pixel_planes(TEST_COUNT, 1)])
    with torch.no_grad():
        ranked = model(images).topk(5, dim=1).indices
    # Label 7 images with the model's first choice and 3 with its third: top-1 70%, top-5 100%.
    labels = [int(ranked[i, 0 if i < 7 else 2]) for i in range(TEST_COUNT)]
    write_cifar(tmp_path, "cifar100", test_labels=labels)
    accept_checksums(monkeypatch, tmp_path, "cifar100")

    code = cli.main(["eval", "--model", "resnet20", "--checkpoint", str(tmp_path / "resnet20.pt"),
                     "--data", "cifar100", "--data-root", str(tmp_path), "--batch-size", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"resnet20 on cifar100 test ({TEST_COUNT} images): top-1 70.00%  top-5 100.00%" in out
