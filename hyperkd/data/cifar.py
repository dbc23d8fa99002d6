"""CIFAR-10 and CIFAR-100 from a local folder in torchvision's layout; never downloaded.

The folder is ``--data-root`` or the ``HYPERKD_DATA`` environment variable and must contain the
extracted python version of the data set (``cifar-100-python/`` or ``cifar-10-batches-py/``).
The 50,000 training images are split 45,000 / 5,000 (train / val) with a fixed seed; the 10,000
test images are the test split. Training images get the standard augmentation (random 32×32 crop
of the image padded by 4, horizontal flip); all splits are normalised with the statistics the
pytorch-cifar-models hub trained with, so its checkpoints score their published accuracy.
"""
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torchvision import datasets, transforms

from hyperkd.data.subset import TransformedSubset

ROOT_ENV = "HYPERKD_DATA"
VAL_FRACTION = 0.1  # 5,000 of the 50,000 training images
TORCHVISION_CLASSES = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5070, 0.4865, 0.4409), (0.2673, 0.2564, 0.2761)),
}


def expected_files(name: str) -> List[str]:
    """Paths, relative to the data root, that torchvision reads for ``name``."""
    cls = TORCHVISION_CLASSES[name]
    names = [entry[0] for entry in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [f"{cls.base_folder}/{file}" for file in names]


def resolve_root(name: str, root: Optional[Union[str, Path]]) -> Path:
    """The data root: ``root``, else ``$HYPERKD_DATA``; the data set's own folder also works."""
    root = root or os.environ.get(ROOT_ENV)
    if not root:
        raise ValueError(f"{name} needs a data root: pass --data-root DIR (root=...) or set "
                         f"{ROOT_ENV} to the folder that contains "
                         f"{TORCHVISION_CLASSES[name].base_folder}/")
    root = Path(root).expanduser()
    # Pointing at cifar-100-python/ itself is an easy slip; torchvision wants its parent.
    return root.parent if root.name == TORCHVISION_CLASSES[name].base_folder else root


def check_files(name: str, root: Path) -> None:
    """Raise FileNotFoundError listing every expected file and where it should be."""
    expected = expected_files(name)
    missing = [path for path in expected if not (root / path).is_file()]
    if missing:
        where = "\n".join(f"  {root / path}" for path in expected)
        raise FileNotFoundError(
            f"{name} not found under {root}: missing {', '.join(missing)}. Expected these files "
            f"(the extracted python version, {TORCHVISION_CLASSES[name].filename}):\n{where}\n"
            f"Put them there, or pass the folder that contains "
            f"{TORCHVISION_CLASSES[name].base_folder}/ with --data-root or {ROOT_ENV}. "
            f"hyperkd never downloads data."
        )


def _read(name: str, root: Path, train: bool):
    try:
        return TORCHVISION_CLASSES[name](str(root), train=train, download=False)
    except RuntimeError as err:  # torchvision's MD5 check failed: wrong or truncated files
        raise ValueError(f"{name} files under {root / TORCHVISION_CLASSES[name].base_folder} "
                         f"failed torchvision's integrity check ({err}); re-extract "
                         f"{TORCHVISION_CLASSES[name].filename} there") from err


def split_train_val(count: int, seed: int = 0) -> Tuple[List[int], List[int]]:
    """Train and val indices of ``count`` training images: a seeded random tenth goes to val."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    val_size = round(count * VAL_FRACTION)
    return sorted(order[val_size:]), sorted(order[:val_size])


def cifar_transforms(name: str, augment: bool):
    """Train and eval transforms from PIL images to normalised tensors."""
    mean, std = MEAN_STD[name]
    to_tensor = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    augmentation = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    train = transforms.Compose((augmentation if augment else []) + to_tensor)
    return train, transforms.Compose(to_tensor)


def cifar_splits(name: str, root: Optional[Union[str, Path]] = None, augment: bool = True,
                 seed: int = 0):
    """Train, val and test data sets of ``name`` ("cifar10" or "cifar100") read from ``root``."""
    if name not in TORCHVISION_CLASSES:
        raise ValueError(f"name must be one of {sorted(TORCHVISION_CLASSES)}, got {name!r}")
    root = resolve_root(name, root)
    check_files(name, root)
    train_file, test_file = _read(name, root, train=True), _read(name, root, train=False)
    train_transform, eval_transform = cifar_transforms(name, augment)
    train, val = split_train_val(len(train_file), seed)
    return (TransformedSubset(train_file, train, train_transform),
            TransformedSubset(train_file, val, eval_transform),
            TransformedSubset(test_file, range(len(test_file)), eval_transform))
