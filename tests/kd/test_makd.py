"""mAKD as a registry method: the 80 variants, named components, and the identities the paper
states with SP, RKD-D and bilinear-pooling CC (Li & Maki §3.1.4)."""
import itertools

import pytest
import torch

import hyperkd.kd as kd
from hyperkd import reference as R
from hyperkd.reference import affinity as RA
from tests.kd.nets import nets
from tests.tolerances import assert_close

VARIANTS = list(itertools.product(RA.AFFINITIES, RA.NORMALISATIONS, RA.LOSSES))


def spec(aff, norm, loss):
    return f"makd:aff={aff},norm={norm},loss={loss}"


def test_all_80_variants_are_registered_and_match_the_reference():
    assert len(VARIANTS) == 80
    student = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 9, dtype=torch.float64)  # another width: only B×B matrices meet
    for variant in VARIANTS:
        method = kd.make_method(spec(*variant))
        assert method.name == spec(*variant) and method.default_tap == "penultimate"
        assert_close(kd.layerwise_loss(method, student, teacher), RA.makd_loss(student, teacher, *variant),
                     torch.float64)


def test_components_default_to_the_papers_choice_and_ignore_case():
    assert kd.make_method("makd").name == spec("cs", "l2", "sl1")
    assert kd.make_method("makd:aff=IP,norm=None").name == spec("ip", "none", "sl1")


@pytest.mark.parametrize("text, message", [
    ("makd:aff=cos", "aff expects one of l1, l2, ip, cs, got 'cos'"),
    ("makd:norm=mean", "norm expects one of l1, l2, avg, max, none, got 'mean'"),
    ("makd:loss=mse", "loss expects one of l1, l2, sl1, kl, got 'mse'"),
    ("makd:temp=2", "unknown parameter 'temp'; valid parameters: aff, norm, loss"),
])
def test_bad_components_list_the_valid_ones(text, message):
    with pytest.raises(ValueError, match=message):
        kd.make_method(text)


def test_batch_of_one_is_an_error():
    with pytest.raises(ValueError, match="batch of 1"):
        kd.layerwise_loss("makd", torch.randn(1, 8, requires_grad=True), torch.randn(1, 8))


def test_sp_is_ip_l2_l2_over_b_squared():
    """SP (Tung & Mori) = ‖row-L2(Q_s Q_sᵀ) − row-L2(Q_t Q_tᵀ)‖²_F / B² = mAKD(IP, L2, L2) / B²."""
    student = [torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    teacher = [torch.randn(5, 3, 4, 4, dtype=torch.float64) for _ in range(2)]
    _, makd = kd.layerwise_terms(spec("ip", "l2", "l2"), student, teacher)
    _, sp = kd.layerwise_terms("sp", student, teacher)
    assert_close(makd / 25, sp, torch.float64)
    assert_close(makd / 25, R.similarity_preserving_losses(student, teacher).detach(), torch.float64)


def test_rkd_distance_is_l2_avg_sl1_up_to_the_mean_over_pairs():
    """RKD-D divides distances by their mean over the B(B − 1) pairs i ≠ j and averages the Huber
    loss over B²; avg normalisation divides by the mean over all B² entries and sums. So the
    mAKD argument is c = B/(B − 1) times RKD-D's, and where every |c·x| < 1 (the quadratic part of
    SL1) mAKD(L2, avg, SL1) = c²·B²·RKD-D exactly; elsewhere they differ (≈, as the paper says)."""
    B = 6
    student = torch.randn(B, 10, dtype=torch.float64, requires_grad=True)
    teacher = student.detach() + 0.05 * torch.randn(B, 10, dtype=torch.float64)
    makd = kd.layerwise_loss(spec("l2", "avg", "sl1"), student, teacher)
    rkd = R.rkd_losses([student], [teacher], 1.0, 0.0)[0]
    c = B / (B - 1)
    assert_close(makd, c * c * B * B * rkd, torch.float64)
    far = torch.randn(B, 10, dtype=torch.float64) * 5
    far[0] += 40  # one outlier sample: some normalised differences beyond SL1's quadratic part
    makd_far = kd.layerwise_loss(spec("l2", "avg", "sl1"), student, far)
    rkd_far = R.rkd_losses([student], [far], 1.0, 0.0)[0]
    assert not torch.isclose(makd_far, c * c * B * B * rkd_far)


def test_bilinear_pooling_cc_is_ip_none_l2():
    """CC's bilinear pool (Peng et al.): ‖Z_s Z_sᵀ − Z_t Z_tᵀ‖²_F, mAKD(IP, noN, L2)."""
    student = torch.randn(7, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(7, 2, 3, 3, dtype=torch.float64)
    zs, zt = student.flatten(1), teacher.flatten(1)
    cc = (zs @ zs.t() - zt @ zt.t()).pow(2).sum()
    assert_close(kd.layerwise_loss(spec("ip", "none", "l2"), student, teacher), cc, torch.float64)


def test_every_tapped_layer_in_one_call():
    student = [torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True),
               torch.randn(4, 6, 2, 2, dtype=torch.float64, requires_grad=True)]
    teacher = [torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 6, 2, 2, dtype=torch.float64)]
    total, terms = kd.layerwise_terms(spec("l1", "max", "kl"), student, teacher, [0.5, 2.0])
    ref = RA.makd_losses(student, teacher, "l1", "max", "kl")
    assert_close(terms, ref.detach(), torch.float64)
    assert_close(total, (torch.tensor([0.5, 2.0], dtype=torch.float64) * ref).sum(), torch.float64)


@pytest.mark.parametrize("loss, count", [("sl1", 16), ("kl", 4)])
def test_reductions_count_entries_or_rows(loss, count):
    student, teacher = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    native = kd.layerwise_loss(f"makd:loss={loss}", student, teacher)
    wanted = "mean" if loss != "kl" else "sum"
    other = kd.layerwise_loss(f"makd:loss={loss},reduction={wanted}", student, teacher)
    assert_close(other, native / count if wanted == "mean" else native * count, torch.float32)


def test_layerkd_taps_the_penultimate_features_by_default():
    student, teacher = nets()
    layerkd = kd.LayerKD(spec("cs", "l2", "sl1"), student, teacher)
    x = torch.randn(4, 3, 6, 6)
    with layerkd.teacher_taps.capture() as t_feats, torch.no_grad():
        teacher(x)
    with layerkd.student_taps.capture() as s_feats:
        student(x)
    total, terms = layerkd(s_feats, t_feats)
    assert terms.shape == (1,) and total.requires_grad
    total.backward()
    assert student.features[0].weight.grad is not None
