"""The hypernetwork's input: γ's sin/cos encoding by hand values, multi-dimensional γ by value,
and the HyperNet's argument errors."""
import math

import pytest
import torch

from hyperkd.hyper import HyperNet, LayoutEntry, LayoutPlan, hypernetize
from hyperkd.hyper.gamma import encode_gamma
from tests.hyper.nets import NETS
from tests.tolerances import assert_close

HALF_SQRT3 = math.sqrt(3) / 2


@pytest.mark.parametrize("gamma, expected", [
    (0.0, [0.0, 1.0]),          # sin 0, cos 0
    (1.0, [1.0, 0.0]),          # sin π/2, cos π/2
    (1 / 3, [0.5, HALF_SQRT3]),  # sin π/6, cos π/6
])
def test_encoding_by_hand_values(gamma, expected):
    z0 = encode_gamma(torch.tensor([[gamma]], dtype=torch.float64))
    torch.testing.assert_close(z0, torch.tensor([expected], dtype=torch.float64), rtol=0, atol=1e-15)


def test_multi_dimensional_encoding_is_all_sines_then_all_cosines():
    gamma = torch.tensor([[0.0, 1 / 3, 1.0], [1.0, 0.0, 1 / 3]], dtype=torch.float64)
    expected = torch.tensor([[0.0, 0.5, 1.0, 1.0, HALF_SQRT3, 0.0],
                             [1.0, 0.0, 0.5, 0.0, 1.0, HALF_SQRT3]], dtype=torch.float64)
    torch.testing.assert_close(encode_gamma(gamma), expected, rtol=0, atol=1e-15)


def test_multi_dimensional_gamma_generates_the_hand_computed_weights():
    # γ = (0, 1/3, 1): z0 = (0, 1/2, 1, 1, √3/2, 0) by hand; then Eq. 1 and Eq. 2–3 by hand.
    torch.manual_seed(0)
    model = hypernetize(NETS["vgg"](), gamma_dim=3, hidden=(4, 5)).double()
    hn = model.hypernet
    z = torch.tensor([[0.0, 0.5, 1.0, 1.0, HALF_SQRT3, 0.0]], dtype=torch.float64)
    for layer in hn.hidden:
        z = torch.nn.functional.leaky_relu(z @ layer.weight.t() + layer.bias, 0.01)
    flat = z @ hn.W.t() + hn.theta0
    with torch.no_grad():
        weights = model.generate(torch.tensor([0.0, 1 / 3, 1.0], dtype=torch.float64))
    for w, ref, e in zip(weights, flat[0].split(model.plan.numels), model.plan):
        assert_close(w[0], ref.reshape(e.shape), torch.float64, msg=e.name)
    # Another γ (its entries permuted) gives other weights: every entry of γ is used.
    with torch.no_grad():
        other = model.generate(torch.tensor([1.0, 1 / 3, 0.0], dtype=torch.float64))
    assert not torch.allclose(other[0], weights[0])


def plan_and_theta0(P=10):
    return LayoutPlan([LayoutEntry("0", "weight", (P,), 0)]), torch.randn(P)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(gamma_dim=0), ValueError, r"gamma_dim: expected a positive int, got 0"),
    (dict(gamma_dim=1.5), ValueError, r"gamma_dim: expected a positive int, got 1.5"),
    (dict(hidden=()), ValueError, r"hidden: expected a non-empty sequence of positive widths, got \(\)"),
    (dict(hidden=(16, 0)), ValueError, r"hidden: expected a non-empty sequence of positive widths"),
    (dict(hidden=(16, 8.0)), ValueError, r"hidden: expected a non-empty sequence of positive widths"),
    (dict(delta_ratio=-0.1), ValueError, r"delta_ratio: expected a number ≥ 0, got -0.1"),
    (dict(delta_ratio=float("nan")), ValueError, r"delta_ratio: expected a number ≥ 0, got nan"),
    (dict(weight_dtype=torch.float16), ValueError, r"weight_dtype: expected one of .*got torch.float16"),
    (dict(theta0=torch.randn(9)), ValueError, r"theta0: expected 10 values, got shape \(9,\)"),
    (dict(theta0=torch.randn(10, 1)), ValueError, r"theta0: expected 10 values, got shape \(10, 1\)"),
])
def test_hypernet_argument_errors_name_the_argument(kwargs, error, match):
    plan, theta0 = plan_and_theta0()
    kwargs = {"theta0": theta0} | kwargs
    with pytest.raises(error, match=match):
        HyperNet(plan, **kwargs)
