"""scikit-learn's bundled handwritten digits, shaped like CIFAR so every zoo model takes them.

1,797 grey 8×8 images of 10 classes, bilinearly resized to 32×32 and repeated to 3 channels,
normalised with the training split's mean and standard deviation, split 1,257 / 180 / 360
(train / val / test), stratified by class with a fixed seed. Nothing is downloaded: the data ships
inside scikit-learn.
"""
from typing import Tuple

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset
from torchvision.transforms import v2

from hyperkd.data.subset import TransformedSubset

NUM_CLASSES = 10
IMAGE_SIZE = 32
SPLIT_SIZES = (1257, 180, 360)  # train, val, test
PIXEL_MAX = 16.0  # load_digits stores integer intensities 0..16


def split_indices(labels: np.ndarray, seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, val and test indices of ``SPLIT_SIZES``, each stratified by ``labels``."""
    _, val_size, test_size = SPLIT_SIZES
    everything = np.arange(len(labels))
    rest, test = train_test_split(everything, test_size=test_size, stratify=labels,
                                  random_state=seed)
    train, val = train_test_split(rest, test_size=val_size, stratify=labels[rest],
                                  random_state=seed)
    return train, val, test


def load_images() -> Tuple[torch.Tensor, torch.Tensor]:
    """All images as float32 (N, 3, 32, 32) in [0, 1] and their int64 labels."""
    digits = load_digits()
    images = torch.from_numpy(digits.images / PIXEL_MAX).float().unsqueeze(1)
    images = torch.nn.functional.interpolate(images, size=IMAGE_SIZE, mode="bilinear",
                                             align_corners=False).clamp_(0.0, 1.0)
    return images.expand(-1, 3, -1, -1).contiguous(), torch.from_numpy(digits.target).long()


def light_augmentation() -> v2.Transform:
    """Small rotations and shifts of at most 2 pixels; no flips, which would change digits."""
    return v2.RandomAffine(degrees=10, translate=(2 / IMAGE_SIZE, 2 / IMAGE_SIZE), fill=0.0)


def digits_splits(augment: bool = False, seed: int = 0):
    """Train, val and test data sets; ``augment`` adds ``light_augmentation`` to train only."""
    images, labels = load_images()
    train, val, test = split_indices(labels.numpy(), seed)
    train_pixels = images[torch.from_numpy(train)]
    normalize = v2.Normalize([train_pixels.mean().item()] * 3, [train_pixels.std().item()] * 3)
    base = TensorDataset(images, labels)
    train_transform = v2.Compose([light_augmentation(), normalize]) if augment else normalize
    return (TransformedSubset(base, train, train_transform),
            TransformedSubset(base, val, normalize),
            TransformedSubset(base, test, normalize))
