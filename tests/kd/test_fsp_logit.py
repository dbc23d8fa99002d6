"""FSP (Eq. 28–29) and logit KD against hand-computed values, and their registry behaviour."""
import math

import pytest
import torch

import hyperkd.kd as kd
from hyperkd import models
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
    with torch.no_grad(), layerkd.teacher_taps.capture() as t:
        teacher(x)
    with layerkd.student_taps.capture() as s:
        student(x)
    total, terms = layerkd(s, t)
    assert layerkd.term_names() == ["features.0->features.3", "features.3->features.6"]
    assert total.item() == pytest.approx(terms.sum().item() / 2, rel=1e-6)


def _flow_pairs(model_name):
    net = models.create(model_name, num_classes=10).eval()
    names = kd.modules_of_type(net)
    method = kd.make_method("fsp")
    method.bind_network(net, names, torch.randn(2, 3, 32, 32))
    return [(names[i], names[j]) for i, j in method.term_pairs(len(names))]


def test_fsp_pairs_follow_the_resnet20_main_path():
    # Registration order would pair layer2.0.conv2 with the shortcut's layer2.0.downsample.0, which
    # runs in parallel on the block's input. Along the data flow: stem → block conv1 → conv2 →
    # next block's conv1, within each stage (a stage's strided first conv pairs with nothing before).
    expected = [("conv1", "layer1.0.conv1")]
    for stage in (1, 2, 3):
        blocks = [(f"layer{stage}.{b}.conv1", f"layer{stage}.{b}.conv2") for b in range(3)]
        for b, (c1, c2) in enumerate(blocks):
            expected.append((c1, c2))
            if b < 2:
                expected.append((c2, blocks[b + 1][0]))
    assert _flow_pairs("resnet20") == expected


def test_fsp_pairs_follow_the_shufflenetv2_main_path():
    pairs = _flow_pairs("shufflenetv2_x0_5")
    assert not any("branch1" in name for pair in pairs for name in pair)
    # Within a unit branch2's 1×1 → 3×3 dw → 1×1, the strided dw of a stage's first unit excepted;
    # then into the next unit's branch2 (its input is the shuffled concat of both branches).
    assert ("stage2.0.branch1.2", "stage2.0.branch2.0") not in pairs
    assert ("stage2.0.branch2.0", "stage2.0.branch2.3") not in pairs  # the strided dw conv
    for pair in [("conv1.0", "stage2.0.branch2.0"), ("stage2.0.branch2.3", "stage2.0.branch2.5"),
                 ("stage2.0.branch2.5", "stage2.1.branch2.0"), ("stage2.1.branch2.0", "stage2.1.branch2.3")]:
        assert pair in pairs
    assert len(pairs) == 46


def test_fsp_bound_pairs_are_the_terms():
    # Three maps, pairs (0, 2) only: the single term is the FSP loss of maps 0 and 2.
    method = kd.make_method("fsp")
    method.pair_indices = [(0, 2)]
    a, b, c = (torch.randn(2, 3, 4, 4) for _ in range(3))
    zeros = [torch.zeros_like(f) for f in (a, b, c)]
    assert kd.layerwise_loss(method, [a, b, c], zeros).item() == pytest.approx(
        kd.layerwise_loss("fsp", [a, c], zeros[:2]).item(), rel=1e-6)


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


def test_production_fsp_and_logit_losses_match_their_oracles():
    from hyperkd.kd.fsp import fsp_losses
    from hyperkd.kd.logit import logit_kd_loss
    from hyperkd.reference import fsp as fsp_ref
    from hyperkd.reference import logit as logit_ref

    torch.manual_seed(0)
    s = [torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 6, 4, 4, dtype=torch.float64)]
    t = [torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 6, 4, 4, dtype=torch.float64)]
    torch.testing.assert_close(fsp_losses([tuple(s)], [tuple(t)]), fsp_ref.fsp_losses([tuple(s)], [tuple(t)]))
    zs, zt = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 10, dtype=torch.float64)
    torch.testing.assert_close(logit_kd_loss(zs, zt, 3.0), logit_ref.logit_kd_loss(zs, zt, 3.0))
