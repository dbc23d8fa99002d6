"""A few dozen digits per split, so that end-to-end driver tests run in seconds."""
import pytest
from torch.utils.data import Subset

import hyperkd.data


@pytest.fixture
def tiny_digits(monkeypatch):
    """Digits cut to 96 train, 32 validation and 32 test images (the real loaders around them)."""
    full = hyperkd.data.splits

    def cut(name, root=None, augment=True, seed=0):
        train, val, test = full(name, root=root, augment=augment, seed=seed)
        return Subset(train, range(96)), Subset(val, range(32)), Subset(test, range(32))

    monkeypatch.setattr(hyperkd.data, "splits", cut)
