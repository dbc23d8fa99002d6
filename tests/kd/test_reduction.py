"""``reduction=sum|mean`` per method: the batch Σ of each equation kept or averaged, folded into λ_m."""
import pytest
import torch

import hyperkd.kd as kd
from hyperkd.reference import activation_boundary_losses
from tests.tolerances import assert_close

B = 3
# How many terms each method's batch Σ runs over: samples, or pairs for SP (B²).
COUNTS = {"at0": B, "at1:p=2": B, "at2:p=4": B, "ab": B, "cwd": B, "fitnets": B, "fsp": B, "sp": B * B,
          "rkd-d": B * B, "rkd-a": B ** 3, "logit": B}
NATIVE = {"at0": "sum", "at1:p=2": "sum", "at2:p=4": "sum", "fitnets": "sum", "ab": "mean", "cwd": "mean",
          "fsp": "mean", "sp": "mean", "rkd-d": "mean", "rkd-a": "mean", "logit": "mean"}


def _features(spec, seed=0):
    torch.manual_seed(seed)
    shape = (B, 5) if spec == "logit" else (B, 4, 4, 4)
    student = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    teacher = [torch.randn(*shape, dtype=torch.float64) for _ in range(2)]
    return student, teacher


def _run(spec, reduction, lambdas=(0.25, 0.75)):
    student, teacher = _features(spec)
    method = kd.make_method(spec, reduction=reduction)
    lambdas = list(lambdas[:method.term_count(2)])
    total, terms = kd.layerwise_terms(method, student, teacher, lambdas)
    (grad,) = torch.autograd.grad(total, student[0])
    return total.detach(), terms, grad


@pytest.mark.parametrize("spec", sorted(COUNTS))
def test_sum_is_the_batch_count_times_the_mean(spec):
    count = COUNTS[spec]
    total_sum, terms_sum, grad_sum = _run(spec, "sum")
    total_mean, terms_mean, grad_mean = _run(spec, "mean")
    assert_close(total_sum, count * total_mean, torch.float64)
    assert_close(terms_sum, count * terms_mean, torch.float64)  # the logged L_m follow the reduction
    assert_close(grad_sum, count * grad_mean, torch.float64)
    assert total_mean.abs() > 0


@pytest.mark.parametrize("spec", sorted(NATIVE))
def test_no_reduction_keeps_the_native_one(spec):
    assert kd.make_method(spec).native_reduction == NATIVE[spec]
    assert_close(_run(spec, None)[0], _run(spec, NATIVE[spec])[0], torch.float64)


def test_rkd_da_sums_distances_over_pairs_and_angles_over_triplets():
    dist, angle = _run("rkd-d", "mean")[1], _run("rkd-a", "mean")[1]
    assert_close(_run("rkd-da", "sum")[1], 0.5 * B ** 2 * dist + 0.5 * B ** 3 * angle, torch.float64)
    assert_close(_run("rkd-da", "mean")[1], 0.5 * dist + 0.5 * angle, torch.float64)


def test_ab_mean_sums_each_sample_and_averages_the_batch():
    # Heo et al.'s squared hinge summed over C·H·W, divided by B: the reference, as documented.
    student, teacher = _features("ab")
    _, terms = kd.layerwise_terms("ab:reduction=mean", student, teacher)
    assert_close(terms, activation_boundary_losses(student, teacher).detach(), torch.float64)


def test_the_spec_wins_over_the_callers_default():
    assert kd.make_method("at0:reduction=sum", reduction="mean").reduction == "sum"
    assert kd.make_method("at0", reduction="mean").reduction == "mean"
    assert kd.make_method("at0").reduction is None


def test_every_method_takes_a_reduction():
    for name in ["ab", "at0", "cwd", "fitnets", "fsp", "ft", "jacobian", "logit", "rkd-d", "sp", "none"]:
        assert kd.make_method(f"{name}:reduction=mean").reduction == "mean"


@pytest.mark.parametrize("spec, message", [
    ("at0:reduction=avg", r"method 'at0': reduction expects one of sum, mean, got 'avg'"),
    ("sp:q=1", r"valid parameters: none \(and reduction=sum\|mean\)"),
])
def test_bad_reductions(spec, message):
    with pytest.raises(ValueError, match=message):
        kd.make_method(spec)


def test_bad_default_reduction():
    with pytest.raises(ValueError, match="reduction: expected one of sum, mean, got 'batch'"):
        kd.make_method("ab", reduction="batch")


def test_default_taps():
    # AB transfers the neuron's on/off state: after BN, before the nonlinearity (Heo et al.); logit
    # KD reads the logits; LayerKD-HN's other methods the conv outputs.
    paper = ["at0", "at1", "at2", "cwd", "fitnets", "fsp", "ft", "jacobian", "rkd-a", "rkd-d", "rkd-da", "sp"]
    assert {name: kd.make_method(name).default_tap for name in paper} == dict.fromkeys(paper, "conv")
    assert kd.make_method("ab").default_tap == "bn" and kd.make_method("logit").default_tap == "logits"
