"""Data sets as (train, val, test) splits and seeded loaders.

``digits`` (bundled with scikit-learn, the default that needs nothing on disk), ``cifar10`` and
``cifar100`` (from a local folder, see ``hyperkd.data.cifar``). Every set yields normalised
3×32×32 float tensors and integer labels.
"""
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch.utils.data import DataLoader

from hyperkd.data import cifar, digits

__all__ = ["DATASETS", "NUM_CLASSES", "loaders", "splits"]

DATASETS = ("digits", "cifar10", "cifar100")
NUM_CLASSES = {"digits": digits.NUM_CLASSES, **cifar.NUM_CLASSES}


def splits(name: str, root: Optional[Union[str, Path]] = None, augment: bool = True,
           seed: int = 0):
    """Train, val and test data sets of ``name``; ``augment`` affects the train split only.

    ``root`` (or ``$HYPERKD_DATA``) is read for the CIFAR sets and ignored for digits.
    """
    if name not in DATASETS:
        raise ValueError(f"data set must be one of {', '.join(DATASETS)}, got {name!r}")
    if name == "digits":
        return digits.digits_splits(augment=augment, seed=seed)
    return cifar.cifar_splits(name, root=root, augment=augment, seed=seed)


def loaders(name: str, batch_size: int, root: Optional[Union[str, Path]] = None,
            workers: int = 0, augment: bool = True,
            seed: int = 0) -> Tuple[DataLoader, DataLoader, DataLoader]:
    """Train, val and test DataLoaders of ``name``.

    Only train is shuffled, in an order fixed by ``seed``; worker processes are seeded from it
    too, so their augmentation repeats. With ``workers=0`` augmentation draws from the global
    torch generator (``torch.manual_seed``). Batches are pinned when CUDA is available.
    """
    for arg, value, least in (("batch_size", batch_size, 1), ("workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{arg} must be an integer >= {least}, got {value!r}")
    train, val, test = splits(name, root=root, augment=augment, seed=seed)
    options = dict(batch_size=batch_size, num_workers=workers,
                   pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
    # The generator fixes the shuffle order and the seeds handed to worker processes.
    shuffled = DataLoader(train, shuffle=True, generator=torch.Generator().manual_seed(seed),
                          **options)
    return shuffled, DataLoader(val, **options), DataLoader(test, **options)
