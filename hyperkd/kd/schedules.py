"""λ_m schedules of LayerKD-HN (appendix A.4): the weight of layer m's KD term at epoch n.

Layers are indexed m = 0 … M − 1, so the spike of Eq. 30 sits on the first layer at n = 0 and on
the last at n = N. Both schedules are normalised over the M KD terms (Σ_m λ_m = 1); the
classification weight λ0 is a separate setting of :class:`~hyperkd.kd.layerkd.LayerKD`'s caller
(see docs/kd-methods.md for how the total loss is assembled).
"""
import math
from typing import List

from hyperkd.ops._checks import check_number


def _check_position(n, N, M):
    if not isinstance(M, int) or M < 1:
        raise ValueError(f"M: expected a layer count >= 1, got {M!r}")
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"N: expected a total epoch count >= 1, got {N!r}")
    if not 0 <= n <= N:
        raise ValueError(f"n: expected an epoch in [0, N={N}], got {n!r}")


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
        _check_position(n, N, M)
        return [1.0 / M] * M

    def __repr__(self):
        return "Uniform()"


class GaussianSpike(Schedule):
    """A Gaussian spike moving from the first to the last layer over training (A.4).

    Eq. 30 as printed: λ̃_m = exp(−((m − (n/N)(M − 1)) / (2σ²))²); then the clip
    λ̂_m = max(Λ_min, λ̃_m) and the normalisation λ_m = λ̂_m / Σ_k λ̂_k. The paper's values are
    σ = 5.0 and Λ_min = 0.05.
    """

    def __init__(self, sigma: float = 5.0, lambda_min: float = 0.05):
        self.sigma = check_number(sigma, "sigma", minimum=0.0, strict=True)
        self.lambda_min = check_number(lambda_min, "lambda_min", minimum=0.0, strict=False)

    def weights(self, n, N, M):
        _check_position(n, N, M)
        centre = n / N * (M - 1)
        width = 2.0 * self.sigma ** 2
        clipped = [max(self.lambda_min, math.exp(-((m - centre) / width) ** 2)) for m in range(M)]
        total = sum(clipped)
        return [c / total for c in clipped]

    def __repr__(self):
        return f"GaussianSpike(sigma={self.sigma:g}, lambda_min={self.lambda_min:g})"
