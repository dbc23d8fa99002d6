"""Weight decoding by a predictor MLP (NeRN, Ashkenazi et al. 2022; paper §2), equation by equation.

For every kernel coordinate (ℓ, f, c) in ``index`` (N×3):
  z₀ = T_ℓ[ℓ] + T_f[f] + T_c[c]     the first layer of a separable encoding: W₀·[e(ℓ); e(f); e(c)]
                                    + b₀ split into one table per index (bias folded into T_ℓ)
  hᵢ = act(zᵢ),  zᵢ₊₁ = Wᵢ hᵢ + bᵢ   hidden layers; act = ReLU (NeRN) or sin (SIREN, ω0 folded into
                                    the weights by the caller)
  out = W_out h_last + b_out        the K² values of the kernel
"""
import torch

RELU, SINE = 0, 1


def activate(z: torch.Tensor, activation: int) -> torch.Tensor:
    return torch.sin(z) if activation == SINE else torch.relu(z)


def pre_activations(index, table_l, table_f, table_c, hidden_weight, hidden_bias,
                    activation: int) -> list:
    """[z₀, …, z_NH], each N×H: the first layer's table sum and every hidden layer's output."""
    zs = [table_l[index[:, 0]] + table_f[index[:, 1]] + table_c[index[:, 2]]]
    for weight, bias in zip(hidden_weight, hidden_bias):
        zs.append(activate(zs[-1], activation) @ weight.T + bias)
    return zs


def siren_decode(index, table_l, table_f, table_c, hidden_weight, hidden_bias, out_weight, out_bias,
                 activation: int) -> torch.Tensor:
    """N×O decoded kernels for the N coordinates of ``index``."""
    z = pre_activations(index, table_l, table_f, table_c, hidden_weight, hidden_bias, activation)[-1]
    return activate(z, activation) @ out_weight.T + out_bias
