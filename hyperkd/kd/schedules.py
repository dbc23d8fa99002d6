"""λ_m schedules of LayerKD-HN (appendix A.4): the weight of layer m's KD term at epoch n.

Layers are indexed m = 0 … M − 1 and the driver's epochs n = 0 … N − 1. Every schedule is
normalised over the M KD terms (Σ_m λ_m = 1); the classification weight λ0 is a separate setting
of :class:`~hyperkd.kd.layerkd.LayerKD`'s caller (see docs/kd-methods.md for how the total loss
is assembled).

A.4 describes "a Gaussian spike moving from early to latter [layers]", but its Eq. 30 as printed
divides m − c by 2σ² *inside* the square, which with the paper's σ = 5 leaves λ nearly uniform
(max/min ≤ 1.14 on ResNet-20's 19 layers) and Λ_min never binds. :class:`GaussianSpike` is the
conventional Gaussian the text describes; :class:`PrintedGaussianSpike` keeps Eq. 30 verbatim.
"""
import math
from typing import List

from hyperkd.ops._checks import check_number


def _check_position(n, N, M, last_epoch):
    if not isinstance(M, int) or M < 1:
        raise ValueError(f"M: expected a layer count >= 1, got {M!r}")
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"N: expected a total epoch count >= 1, got {N!r}")
    if not 0 <= n <= last_epoch:
        raise ValueError(f"n: expected an epoch in [0, {last_epoch}] (N={N}), got {n!r}")


def _clip_and_normalise(raw: List[float], lambda_min: float) -> List[float]:
    """λ̂_m = max(Λ_min, λ̃_m), then λ_m = λ̂_m / Σ_k λ̂_k (A.4)."""
    clipped = [max(lambda_min, value) for value in raw]
    total = sum(clipped)
    return [c / total for c in clipped]


class Schedule:
    """λ_m^(n) as a function of (epoch n, total epochs N, layer m, layer count M)."""

    def weights(self, n: int, N: int, M: int) -> List[float]:
        raise NotImplementedError

    def __call__(self, n: int, N: int, m: int, M: int) -> float:
        if not 0 <= m < M:
            raise ValueError(f"m: expected a layer index in [0, M={M}), got {m!r}")
        return self.weights(n, N, M)[m]


class Uniform(Schedule):
    """λ_m = 1/M at every epoch (the paper's best setting, Table 1)."""

    def weights(self, n, N, M):
        _check_position(n, N, M, N)
        return [1.0 / M] * M

    def __repr__(self):
        return "Uniform()"


class _SpikeParameters(Schedule):
    def __init__(self, sigma: float = 5.0, lambda_min: float = 0.05):
        self.sigma = check_number(sigma, "sigma", minimum=0.0, strict=True)
        self.lambda_min = check_number(lambda_min, "lambda_min", minimum=0.0, strict=False)

    def __repr__(self):
        return f"{type(self).__name__}(sigma={self.sigma:g}, lambda_min={self.lambda_min:g})"


class GaussianSpike(_SpikeParameters):
    """The moving Gaussian spike of A.4, as its text describes it (``--schedule spike``).

    λ̃_m = exp(−(m − c_n)² / (2σ²)) with the centre c_n = n/(N − 1)·(M − 1) moving linearly from the
    first layer (m = 0) at the first epoch (n = 0) to the last layer (m = M − 1) at the last epoch
    (n = N − 1); a one-epoch run keeps it on the first layer. Then the clip
    λ̂_m = max(Λ_min, λ̃_m) and the normalisation λ_m = λ̂_m / Σ_k λ̂_k. The paper's values are
    σ = 5.0 and Λ_min = 0.05; the exact Gaussian (rather than Eq. 30's printed form) is our reading.
    """

    def weights(self, n, N, M):
        _check_position(n, N, M, N - 1)
        centre = n / (N - 1) * (M - 1) if N > 1 else 0.0
        width = 2.0 * self.sigma ** 2
        return _clip_and_normalise([math.exp(-(m - centre) ** 2 / width) for m in range(M)], self.lambda_min)


class PrintedGaussianSpike(_SpikeParameters):
    """Eq. 30 verbatim (``--schedule spike-printed``): λ̃_m = exp(−((m − (n/N)(M − 1)) / (2σ²))²),
    clipped at Λ_min and normalised as in :class:`GaussianSpike`. With σ = 5 it is nearly flat, and
    with the driver's epochs n = 0 … N − 1 its centre stops one step short of the last layer."""

    def weights(self, n, N, M):
        _check_position(n, N, M, N)
        centre = n / N * (M - 1)
        width = 2.0 * self.sigma ** 2
        return _clip_and_normalise([math.exp(-((m - centre) / width) ** 2) for m in range(M)], self.lambda_min)
