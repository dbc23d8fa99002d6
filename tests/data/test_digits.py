"""The embedded digits set: split sizes, determinism, stratification, normalisation, loaders."""
import numpy as np
import pytest
import torch

from hyperkd import data
from hyperkd.data import digits


@pytest.fixture(scope="module")
def labels():
    return digits.load_images()[1].numpy()


def stack(dataset):
    images, targets = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.as_tensor(targets)


def test_split_has_the_documented_sizes_and_covers_every_image_once(labels):
    train, val, test = digits.split_indices(labels)
    assert (len(train), len(val), len(test)) == (1257, 180, 360)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(1797))


def test_split_is_deterministic_and_depends_on_the_seed(labels):
    first, again, other = (digits.split_indices(labels, seed) for seed in (0, 0, 1))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[2], other[2])


def test_split_is_stratified(labels):
    overall = np.bincount(labels, minlength=10) / len(labels)
    for indices in digits.split_indices(labels):
        counts = np.bincount(labels[indices], minlength=10)
        # Stratification rounds each class to within one image of its exact share.
        assert np.abs(counts - overall * len(indices)).max() <= 1.0


def test_images_are_32x32_rgb_normalised_with_train_statistics():
    train, val, test = digits.digits_splits(augment=False)
    images, targets = stack(train)
    assert images.shape == (1257, 3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(images[:, 0], images[:, 2])  # grey repeated to three channels
    assert images.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert images.std().item() == pytest.approx(1.0, abs=1e-3)
    assert sorted(targets.unique().tolist()) == list(range(10))
    assert stack(test)[0].mean().abs().item() < 0.1  # same statistics, not re-normalised
    assert stack(test)[0].mean().item() != pytest.approx(0.0, abs=1e-5)


def test_upsampled_digits_keep_their_shape():
    """Pooled back to 8×8, each image matches its own digit, not a transposed or another one."""
    from sklearn.datasets import load_digits

    images, _ = digits.load_images()
    pooled = torch.nn.functional.avg_pool2d(images[:50, :1], 4)[:, 0]
    original = torch.from_numpy(load_digits().images[:50] / 16.0).float()

    def error(reference):
        return (pooled - reference).abs().mean().item()

    # Bilinear upsampling blurs strokes a little (about 0.07); a mix-up costs 0.24 or more.
    assert error(original) < 0.1
    assert error(original.transpose(1, 2)) > 0.2 and error(original.roll(1, dims=0)) > 0.2


def test_light_augmentation_changes_train_images_only():
    plain_train, plain_val, _ = digits.digits_splits(augment=False)
    train, val, _ = digits.digits_splits(augment=True)
    torch.manual_seed(0)
    changed = sum(not torch.allclose(train[i][0], plain_train[i][0]) for i in range(20))
    assert changed >= 15
    assert all(torch.equal(val[i][0], plain_val[i][0]) for i in range(20))
    assert train[0][1] == plain_train[0][1]


def test_loaders_yield_seeded_batches():
    train, val, test = data.loaders("digits", batch_size=64, seed=3)
    images, targets = next(iter(train))
    assert images.shape == (64, 3, 32, 32) and targets.dtype == torch.int64
    assert (len(train.dataset), len(val.dataset), len(test.dataset)) == (1257, 180, 360)
    assert not test.pin_memory or torch.cuda.is_available()
    again = next(iter(data.loaders("digits", batch_size=64, seed=3)[0]))[1]
    other = next(iter(data.loaders("digits", batch_size=64, seed=4)[0]))[1]
    assert torch.equal(targets, again) and not torch.equal(targets, other)
    # Val and test keep their order, so evaluations line up image by image.
    in_order = torch.as_tensor([test.dataset[i][1] for i in range(64)])
    assert torch.equal(next(iter(test))[1], in_order)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="mnist", batch_size=8), "data set must be one of digits, cifar10, cifar100"),
    (dict(name="digits", batch_size=0), "batch_size must be an integer >= 1"),
    (dict(name="digits", batch_size=8, workers=-1), "workers must be an integer >= 0"),
])
def test_loaders_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.loaders(**kwargs)
