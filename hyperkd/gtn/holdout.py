"""The held-out batches that a learnt path distribution is updated on: a fraction of the train split
carved off deterministically, which the weights never train on (validation and test stay
untouched, so model selection is as before).

The held-out items are read without augmentation (the train split as ``augment=False`` builds it,
as ProxylessNAS reads its held-out part of ImageNet's train set with the validation transform).
Batch ``t`` is a pure function of (seed, t): pass ``t // len`` over the held-out items in an order
drawn from the seed and the pass, so a resumed run that knows how many updates it has made sees the
same batches as an uninterrupted one.
"""
from typing import Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from hyperkd import data


def check_fraction(fraction: float) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"arch_holdout_fraction (--arch-holdout-fraction): expected a fraction in (0, 1), "
                         f"got {fraction!r}")


def holdout_split(size: int, fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(indices trained on, held-out indices) of a train split of ``size`` items: a seeded
    permutation, its first round(fraction·size) items held out; both sorted and disjoint."""
    check_fraction(fraction)
    held = round(fraction * size)
    if not 1 <= held < size:
        raise ValueError(f"arch_holdout_fraction (--arch-holdout-fraction): {fraction} of the {size} train "
                         f"items holds out {held}; expected at least one held out and one left to train on")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[held:].sort().values, order[:held].sort().values


class HoldoutBatches:
    """Batches of ``dataset`` by index: ``batch(t)`` is the t-th (x, y). Every batch holds
    min(batch_size, len(dataset)) items (a pass drops its remainder), so batch norm never sees a
    batch of one."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int):
        if len(dataset) < 1:
            raise ValueError("holdout: expected at least one held-out item")
        self.dataset, self.seed = dataset, seed
        self.batch_size = min(batch_size, len(dataset))
        self.per_pass = len(dataset) // self.batch_size
        self._order = (None, None)  # (pass, its order)

    def _pass_order(self, n: int) -> torch.Tensor:
        if self._order[0] != n:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + n + 1)
            self._order = (n, torch.randperm(len(self.dataset), generator=generator))
        return self._order[1]

    def batch(self, t: int) -> Tuple[torch.Tensor, torch.Tensor]:
        order = self._pass_order(t // self.per_pass)
        start = (t % self.per_pass) * self.batch_size
        return default_collate([self.dataset[int(i)] for i in order[start:start + self.batch_size]])


def holdout_loaders(dataset: str, batch_size: int, fraction: float, *, root=None, workers: int = 0,
                    seed: int = 0):
    """(train loader without the held-out items, :class:`HoldoutBatches`, val loader, test loader).
    The train loader is :func:`hyperkd.data.loaders`' one (same options, same shuffling generator)
    over the items left to train on."""
    train, val, test = data.loaders(dataset, batch_size, root=root, workers=workers, seed=seed)
    fit, held = holdout_split(len(train.dataset), fraction, seed)
    fit_loader = DataLoader(Subset(train.dataset, fit.tolist()), batch_size=batch_size, shuffle=True,
                            generator=train.generator, num_workers=train.num_workers,
                            pin_memory=train.pin_memory, persistent_workers=train.persistent_workers)
    unaugmented = data.splits(dataset, root=root, augment=False, seed=seed)[0]
    return fit_loader, HoldoutBatches(Subset(unaugmented, held.tolist()), batch_size, seed), val, test
