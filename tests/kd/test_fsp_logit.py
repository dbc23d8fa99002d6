"""FSP (Eq. 28–29) and logit KD against hand-computed values, and their registry behaviour."""
import math

import pytest
import torch

import hyperkd.kd as kd
from tests.kd.nets import nets


def test_fsp_pools_the_larger_map_and_divides_by_the_batch():
    # a: 1×1×2×2 = [[1, 2], [3, 4]] pools to 2.5; b: 1×1×1×1 = 2. S = 2.5·2/1 = 5, teacher S = 0.
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    b = torch.full((1, 1, 1, 1), 2.0)
    zeros = [torch.zeros_like(a), torch.zeros_like(b)]
    assert kd.layerwise_loss("fsp", [a, b], zeros).item() == pytest.approx(25.0)
    # Same size, 2 channels × 1 channel over 1×2 positions: S = [(1·3 + 2·4)/2, (0·3 + 1·4)/2].
    a = torch.tensor([[[[1.0, 2.0]], [[0.0, 1.0]]]]).repeat(2, 1, 1, 1)
    b = torch.tensor([[[[3.0, 4.0]]]]).repeat(2, 1, 1, 1)
    loss = kd.layerwise_loss("fsp", [a, b], [torch.zeros_like(a), torch.zeros_like(b)])
    assert loss.item() == pytest.approx((5.5 ** 2 + 2.0 ** 2) * 2 / 2)


def test_fsp_gives_one_term_per_adjacent_pair_in_layerkd():
    student, teacher = nets(depth=3)
    layerkd = kd.LayerKD("fsp", student, teacher)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        teacher(x)
    student(x)
    total, terms = layerkd()
    assert list(terms) == ["features.0->features.3", "features.3->features.6"]
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()) / 2, rel=1e-6)


def test_fsp_needs_two_layers():
    f = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="fsp: needs at least 2 tapped layers"):
        kd.layerwise_loss("fsp", [f], [f])


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_logit_kd_matches_hand_computation(T):
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    p = 3 ** (1 / T) / (3 ** (1 / T) + 1)  # softmax([ln 3, 0]/T)[0]
    expected = T * T * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert kd.layerwise_loss(f"logit:T={T}", [student], [teacher]).item() == pytest.approx(expected, rel=1e-6)


def test_logit_kd_rejects_feature_maps():
    f = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"logit:T=4: layer 0 expects B×K logits"):
        kd.layerwise_loss("logit", [f], [f])
