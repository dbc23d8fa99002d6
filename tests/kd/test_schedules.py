"""λ_m schedules (A.4) against values computed by hand."""
import math

import pytest

from hyperkd.kd.schedules import GaussianSpike, Uniform


def test_uniform_is_one_over_m():
    assert Uniform().weights(3, 10, 4) == [0.25] * 4
    assert Uniform()(0, 10, 2, 4) == 0.25


def test_gaussian_spike_without_clipping_at_epoch_zero():
    # σ = 1, 2σ² = 2, centre 0: λ̃ = e^0, e^-(1/2)², e^-(2/2)² = 1, 0.7788008, 0.3678794; Σ = 2.1466802.
    lam = GaussianSpike(sigma=1.0, lambda_min=0.05).weights(0, 10, 3)
    assert lam == pytest.approx([0.465835567, 0.362793105, 0.171371328], abs=1e-9)
    assert sum(lam) == pytest.approx(1.0)


def test_gaussian_spike_clips_at_lambda_min():
    # σ = 0.5, 2σ² = 0.5: λ̃ = 1, e^-4 = 0.0183, e^-16 ≈ 1e-7; the last two clip to 0.05, Σ = 1.1.
    lam = GaussianSpike(sigma=0.5, lambda_min=0.05).weights(0, 10, 3)
    assert lam == pytest.approx([1 / 1.1, 0.05 / 1.1, 0.05 / 1.1], abs=1e-12)


def test_gaussian_spike_reaches_the_last_layer_at_the_last_epoch():
    # n = N puts the centre on m = M − 1 = 2, mirroring epoch 0.
    spike = GaussianSpike(sigma=1.0, lambda_min=0.05)
    assert spike.weights(10, 10, 3) == pytest.approx(spike.weights(0, 10, 3)[::-1], abs=1e-12)
    # Halfway the centre is m = 1: λ̃ = e^-(1/2)², 1, e^-(1/2)².
    e = math.exp(-0.25)
    assert spike(5, 10, 1, 3) == pytest.approx(1 / (1 + 2 * e), abs=1e-12)


def test_paper_defaults_are_nearly_flat_on_resnet20():
    # σ = 5: the printed Eq. 30 divides by 2σ² = 50, so over 19 layers λ̃ ≥ e^-(18/50)² = 0.878.
    lam = GaussianSpike().weights(0, 40, 19)
    assert lam[0] == pytest.approx(1 / sum(math.exp(-(m / 50) ** 2) for m in range(19)), abs=1e-12)
    assert lam[0] > lam[-1] > 0.878 * lam[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0.0}, "sigma: expected sigma > 0"),
    ({"lambda_min": -0.1}, "lambda_min: expected lambda_min >= 0"),
])
def test_bad_schedule_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianSpike(**kwargs)


@pytest.mark.parametrize("args, message", [
    ((11, 10, 0, 3), r"n: expected an epoch in \[0, N=10\]"),
    ((1, 10, 3, 3), r"m: expected a layer index in \[0, M=3\)"),
    ((1, 0, 0, 3), "N: expected a total epoch count"),
])
def test_bad_positions(args, message):
    with pytest.raises(ValueError, match=message):
        GaussianSpike()(*args)
