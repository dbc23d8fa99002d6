import pytest
import torch

import hyperkd.kd as kd
from hyperkd import reference as R
from tests.kd.features import ODD_SHAPES, feature_pair
from tests.tolerances import assert_close


def test_methods_lists_every_name_with_defaults():
    listed = kd.methods()
    assert listed["at0"] == {"p": 1.0}
    assert listed["at1"] == {"p": 2.0}
    assert listed["ab"] == {"margin": 1.0}
    assert listed["none"] == {}
    assert listed["cwd"] == {"tau": 4.0} and listed["logit"] == {"T": 4.0}
    assert {"fitnets", "fsp", "rkd-d", "rkd-a", "rkd-da", "sp"} <= set(listed)


@pytest.mark.parametrize("spec, expected", [
    ("at1:p=2", ("at1", {"p": 2.0})),
    ("AT2 : p = 4", ("at2", {"p": 4.0})),
    ("ab:margin=0.5", ("ab", {"margin": 0.5})),
    ("ab", ("ab", {"margin": 1.0})),
])
def test_parse_fills_defaults_and_reads_parameters(spec, expected):
    assert kd.parse_method(spec) == expected


def test_describe_has_one_line_per_method():
    lines = kd.describe().splitlines()
    assert len(lines) == len(kd.methods())
    assert "cwd(tau=4): channel-wise distillation (Eq. 20-21)" in lines


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown KD method 'atx'.*at0\(p=1\).*none"):
        kd.parse_method("atx")


@pytest.mark.parametrize("spec, message", [
    ("at1:q=2", r"unknown parameter 'q'; valid parameters: p"),
    ("at1:p=two", r"p expects a number, got 'two'"),
    ("at1:p", r"p expects a number"),
    ("at1:p=0", r"p must be > 0, got 0"),
    ("ab:margin=-1", r"margin must be >= 0, got -1"),
    ("none:x=1", r"valid parameters: none"),
])
def test_bad_parameters_name_what_is_valid(spec, message):
    with pytest.raises(ValueError, match=message):
        kd.parse_method(spec)


@pytest.mark.parametrize("spec, kind, p", [("at0", 0, 1.0), ("at1:p=2", 1, 2.0), ("at2:p=4", 2, 4.0)])
def test_attention_transfer_is_wired_to_the_fused_op(spec, kind, p):
    student, teacher = feature_pair(ODD_SHAPES, torch.float64)
    lambdas = [0.5, 2.0, 1.5]
    total, terms = kd.layerwise_terms(spec, student, teacher, lambdas)
    expected = R.attention_transfer_loss(student, teacher, kind=kind, p=p, lambdas=lambdas)
    assert_close(total, expected, torch.float64)
    singles = torch.stack([R.attention_transfer_loss([s], [t], kind=kind, p=p) for s, t in zip(student, teacher)])
    assert_close(terms, singles.detach(), torch.float64)
    (grad,) = torch.autograd.grad(total, student[0])
    (ref_grad,) = torch.autograd.grad(expected, student[0])
    assert_close(grad, ref_grad, torch.float64)


def test_layerwise_loss_accepts_teacher_summaries():
    student, teacher = feature_pair(ODD_SHAPES, torch.float64)
    method = kd.make_method("ab:margin=0.5")
    summaries = [method.summarise(g, m) for m, g in enumerate(teacher)]
    a = kd.layerwise_loss(method, student, summaries, teacher_summarised=True)
    b = kd.layerwise_loss("ab:margin=0.5", student, teacher)
    assert_close(a, b, torch.float64)
    assert_close(a, R.activation_boundary_loss(student, teacher, margin=0.5), torch.float64)


def test_none_is_zero_and_backpropagates_zero():
    student, teacher = feature_pair(ODD_SHAPES)
    loss = kd.layerwise_loss("none", student, teacher)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(s.grad) == 0 for s in student)


def test_mismatched_shapes_are_reported():
    student, teacher = feature_pair(ODD_SHAPES)
    teacher[1] = torch.randn(3, 8, 3, 3)
    with pytest.raises(ValueError, match=r"layer 1: student shape \(3, 7, 3, 3\) and teacher shape \(3, 8, 3, 3\)"):
        kd.layerwise_loss("at0", student, teacher)


def test_lambdas_count_is_checked():
    student, teacher = feature_pair(ODD_SHAPES)
    with pytest.raises(ValueError, match="lambdas: expected 3 weights"):
        kd.layerwise_loss("ab", student, teacher, lambdas=[1.0, 2.0])


def test_debug_flag_names_the_non_finite_layer():
    student, teacher = feature_pair(ODD_SHAPES)
    with torch.no_grad():
        student[2][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"layer '2' is nan"):
        kd.layerwise_loss("at0", student, teacher, check_finite=True)
