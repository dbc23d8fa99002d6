"""Weight predictors: an MLP from a kernel coordinate (ℓ, f, c) to its K² values (paper §2).

Two input encodings:
- ``"nern"``: NeRN's sin/cos features of each raw integer index p, x_j = p·b^j·π for j < levels
  (levels 40, b = 0.76), [sin x_j, cos x_j] per index, 3·2·levels inputs; ReLU hidden layers.
- ``"siren"``: the coordinates scaled to [-1, 1], then SIREN layers sin(ω0·(Wx + b)) with ω0 = 30
  and the initialisation of Sitzmann et al. (2020, §3.2): first layer W ~ U(−1/n, 1/n), later
  layers W ~ U(−√(6/n)/ω0, √(6/n)/ω0), n the fan-in.

Both encodings are separable, so the first layer W₀·[e(ℓ); e(f); e(c)] + b₀ equals
T_ℓ[ℓ] + T_f[f] + T_c[c] with T_x = e(arange) W₀,xᵀ (b₀ folded into T_ℓ): the tables cost
(#layers + #filters + #channels)·H·fan-in instead of N·H·fan-in for the N kernels, which is what
the fused decode consumes. ``depth`` counts linear layers (first + hidden + output), 5 by default.
"""
import math
from typing import Tuple

import torch
from torch import nn

from hyperkd.ops.siren_decode import ACTIVATIONS, gemm_chain, siren_decode

ENCODINGS = ("nern", "siren")
BACKENDS = ("fused", "eager")


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer ≥ {minimum}, got {value!r}")
    return value


def nern_features(positions: torch.Tensor, levels: int, base: float) -> torch.Tensor:
    """[sin(p·b^j·π), cos(p·b^j·π)]_j for integer positions p: len(p) × 2·levels."""
    x = positions.to(torch.float64)[:, None] * (base ** torch.arange(levels, dtype=torch.float64)) * math.pi
    return torch.cat([torch.sin(x), torch.cos(x)], dim=1)


def unit_interval(count: int) -> torch.Tensor:
    """Index 0..count−1 mapped linearly onto [-1, 1] (0 when there is only one)."""
    return torch.linspace(-1.0, 1.0, count, dtype=torch.float64) if count > 1 else torch.zeros(1, dtype=torch.float64)


class WeightPredictor(nn.Module):
    """G_φ(ℓ, f, c) → K² kernel values, for coordinates inside ``grid`` = (layers, filters, channels)."""

    def __init__(self, grid: Tuple[int, int, int], output_size: int, *, encoding: str = "siren",
                 width: int = 128, depth: int = 5, omega0: float = 30.0, levels: int = 40,
                 base: float = 0.76):
        super().__init__()
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}")
        if len(grid) != 3:
            raise ValueError(f"grid: expected (layers, filters, channels), got {grid!r}")
        self.grid = tuple(_positive_int(g, "grid") for g in grid)
        self.output_size = _positive_int(output_size, "output_size")
        self.width = _positive_int(width, "width")
        self.depth = _positive_int(depth, "depth", minimum=2)
        self.encoding, self.omega0 = encoding, float(omega0)
        self.levels, self.base = _positive_int(levels, "levels"), float(base)
        self.activation = "sin" if encoding == "siren" else "relu"
        for axis, count in zip("lfc", self.grid):
            feats = unit_interval(count)[:, None] if encoding == "siren" else \
                nern_features(torch.arange(count), levels, base)
            self.register_buffer(f"features_{axis}", feats.float(), persistent=False)
        fan_in = 3 if encoding == "siren" else 6 * levels
        self.register_buffer("table_inputs", self._table_inputs(fan_in // 3), persistent=False)
        self.first_weight = nn.Parameter(torch.empty(width, fan_in))
        self.first_bias = nn.Parameter(torch.empty(width))
        hidden = self.depth - 2
        self.hidden_weight = nn.Parameter(torch.empty(hidden, width, width))
        self.hidden_bias = nn.Parameter(torch.empty(hidden, width))
        self.out_weight = nn.Parameter(torch.empty(output_size, width))
        self.out_bias = nn.Parameter(torch.empty(output_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        layers = [(self.first_weight, self.first_bias)] + list(zip(self.hidden_weight, self.hidden_bias)) \
            + [(self.out_weight, self.out_bias)]
        with torch.no_grad():
            for i, (w, b) in enumerate(layers):
                fan_in = w.shape[1]
                if self.encoding == "siren":
                    bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.omega0
                    w.uniform_(-bound, bound)
                else:
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                b.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))

    def _table_inputs(self, per_axis: int) -> torch.Tensor:
        """The encoded ℓ, f and c indices stacked into one (layers+filters+channels) × (3·per_axis+1)
        input, block-diagonal over the first layer's three fan-in chunks, with a column of ones on
        the ℓ rows for the bias and ω0 folded in: all three tables are then one GEMM, a single
        autograd node, where per-axis products, a bias add and the ω0 scalings took seven ops and
        their backward, a fixed cost on every training step."""
        rows = sum(self.grid)
        inputs = torch.zeros(rows, 3 * per_axis + 1)
        start = 0
        for axis, feats in enumerate((self.features_l, self.features_f, self.features_c)):
            inputs[start:start + len(feats), axis * per_axis:(axis + 1) * per_axis] = feats
            start += len(feats)
        inputs[:self.grid[0], -1] = 1.0
        return inputs * (self.omega0 if self.encoding == "siren" else 1.0)

    def first_layer_tables(self):
        """(T_ℓ, T_f, T_c): the first layer's pre-activation split per index (ω0 folded in for SIREN)."""
        weight = torch.cat([self.first_weight, self.first_bias[:, None]], dim=1)
        return (self.table_inputs @ weight.T).split(self.grid)

    def mlp_weights(self):
        """(hidden_weight, hidden_bias, out_weight, out_bias) as the decode op takes them."""
        scale = self.omega0 if self.encoding == "siren" else 1.0
        return scale * self.hidden_weight, scale * self.hidden_bias, self.out_weight, self.out_bias

    def forward(self, coords: torch.Tensor, backend: str = "fused") -> torch.Tensor:
        """N×output_size kernels for the int64 N×3 ``coords``: ``"fused"`` through the decode op,
        ``"eager"`` as its GEMM chain of plain PyTorch ops, differentiated by autograd."""
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        tables = self.first_layer_tables()
        if backend == "eager":
            return gemm_chain(coords, *tables, *self.mlp_weights(), ACTIVATIONS[self.activation])[0]
        return siren_decode(coords, tables, *self.mlp_weights(), activation=self.activation)

    def extra_repr(self) -> str:
        return (f"encoding={self.encoding!r}, grid={self.grid}, width={self.width}, depth={self.depth}, "
                f"output_size={self.output_size}")


def parameter_count(predictor: nn.Module) -> int:
    return sum(p.numel() for p in predictor.parameters())
