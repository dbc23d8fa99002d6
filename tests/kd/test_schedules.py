"""λ_m schedules (A.4) against values computed by hand."""
import math

import pytest

from hyperkd.kd.schedules import GaussianSpike, PrintedGaussianSpike, Uniform


def test_uniform_is_one_over_m():
    assert Uniform().weights(3, 10, 4) == [0.25] * 4
    assert Uniform()(0, 10, 2, 4) == 0.25


def test_spike_sits_on_the_first_layer_at_the_first_epoch():
    # σ = 1, 2σ² = 2, centre 0: λ̃ = e^0, e^(-1/2), e^(-4/2) = 1, 0.6065307, 0.1353353; Σ = 1.7418659.
    lam = GaussianSpike(sigma=1.0, lambda_min=0.05).weights(0, 5, 3)
    assert lam == pytest.approx([0.574096993, 0.348207428, 0.077695579], abs=1e-9)
    assert sum(lam) == pytest.approx(1.0)


def test_spike_sits_on_the_last_layer_at_the_last_epoch():
    # N = 5 epochs are n = 0 … 4; at n = 4 the centre is m = M − 1 = 2: epoch 0 mirrored.
    lam = GaussianSpike(sigma=1.0, lambda_min=0.05).weights(4, 5, 3)
    assert lam == pytest.approx([0.077695579, 0.348207428, 0.574096993], abs=1e-9)
    assert max(range(3), key=lam.__getitem__) == 2


def test_spike_moves_linearly_through_the_middle():
    # n = 2 of 0 … 4: centre (2/4)·2 = 1, so λ̃ = e^(-1/2), 1, e^(-1/2).
    assert GaussianSpike(sigma=1.0, lambda_min=0.05).weights(2, 5, 3) == pytest.approx(
        [0.274068619, 0.451862762, 0.274068619], abs=1e-9)


def test_spike_clips_at_lambda_min():
    # σ = 0.5, 2σ² = 0.5: λ̃ = 1, e^-2 = 0.1353, e^-8 = 3.4e-4; only the last clips to 0.05,
    # Σ = 1.1853353.
    lam = GaussianSpike(sigma=0.5, lambda_min=0.05).weights(0, 5, 3)
    assert lam == pytest.approx([0.843643157, 0.114174686, 0.042182158], abs=1e-9)


def test_spike_with_the_paper_values_is_a_real_spike_on_resnet20():
    # σ = 5 over M = 19: λ̃_m = e^(-m²/50) < 0.05 for m ≥ 13, so at n = 0 six layers clip and
    # max/min = 1/0.05 = 20 (the printed form gives ≤ 1.14).
    lam = GaussianSpike().weights(0, 40, 19)
    assert lam[0] / lam[-1] == pytest.approx(20.0, rel=1e-12)
    assert lam[13:] == pytest.approx([lam[-1]] * 6, rel=1e-12)
    assert GaussianSpike().weights(39, 40, 19)[::-1] == pytest.approx(lam, rel=1e-12)


def test_one_epoch_keeps_the_spike_on_the_first_layer():
    assert GaussianSpike(sigma=1.0).weights(0, 1, 3) == GaussianSpike(sigma=1.0).weights(0, 5, 3)


def test_printed_form_at_epoch_zero():
    # Eq. 30 as printed, σ = 1: 2σ² = 2 inside the square: λ̃ = 1, e^-(1/2)², e^-(2/2)²; Σ = 2.1466802.
    lam = PrintedGaussianSpike(sigma=1.0, lambda_min=0.05).weights(0, 10, 3)
    assert lam == pytest.approx([0.465835567, 0.362793105, 0.171371328], abs=1e-9)


def test_printed_form_never_reaches_the_last_layer_within_the_epochs():
    # The driver's last epoch is n = N − 1 = 9: centre (9/10)·2 = 1.8, not 2.
    e = [math.exp(-((m - 1.8) / 2) ** 2) for m in range(3)]
    lam = PrintedGaussianSpike(sigma=1.0, lambda_min=0.05).weights(9, 10, 3)
    assert lam == pytest.approx([v / sum(e) for v in e], abs=1e-12)


def test_printed_paper_defaults_are_nearly_flat_on_resnet20():
    # σ = 5: the printed Eq. 30 divides by 2σ² = 50, so over 19 layers λ̃ ≥ e^-(18/50)² = 0.878.
    lam = PrintedGaussianSpike().weights(0, 40, 19)
    assert lam[0] == pytest.approx(1 / sum(math.exp(-(m / 50) ** 2) for m in range(19)), abs=1e-12)
    assert lam[0] > lam[-1] > 0.878 * lam[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma": 0.0}, "sigma: expected sigma > 0"),
    ({"lambda_min": -0.1}, "lambda_min: expected lambda_min >= 0"),
])
@pytest.mark.parametrize("schedule", [GaussianSpike, PrintedGaussianSpike])
def test_bad_schedule_parameters(schedule, kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedule(**kwargs)


@pytest.mark.parametrize("args, message", [
    ((10, 10, 0, 3), r"n: expected an epoch in \[0, 9\] \(N=10\)"),
    ((1, 10, 3, 3), r"m: expected a layer index in \[0, M=3\)"),
    ((1, 0, 0, 3), "N: expected a total epoch count"),
])
def test_bad_positions(args, message):
    with pytest.raises(ValueError, match=message):
        GaussianSpike()(*args)


def test_no_layers():
    with pytest.raises(ValueError, match="M: expected a layer count >= 1, got 0"):
        GaussianSpike().weights(0, 10, 0)
