"""A view of some items of a data set with its own transform, so splits of one set can differ."""
from typing import Callable, Optional, Sequence

from torch.utils.data import Dataset


class TransformedSubset(Dataset):
    """Items ``indices`` of ``base`` (which yields ``(input, label)``), with ``transform`` applied.

    Train and validation come from one file but need different transforms (augmentation or
    not); wrapping the untransformed base twice avoids reading the data twice.
    """

    def __init__(self, base: Dataset, indices: Sequence[int],
                 transform: Optional[Callable] = None):
        self.base = base
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, label = self.base[self.indices[index]]
        return (self.transform(image) if self.transform else image), label
