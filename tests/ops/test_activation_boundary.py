"""Fused activation-boundary KD (Eq. 8, 10): C++ and Triton parity with the eager reference,
gradients, opcheck, compile, memory discipline and bad input."""
import pytest
import torch

from hyperkd import reference as R
from hyperkd.kernels import activation_boundary as triton_ab
from hyperkd.ops import (activation_boundary_loss, activation_boundary_losses,
                         activation_boundary_teacher_summary, activation_boundary_terms)
from tests.kd.features import ODD_SHAPES, feature_pair
from tests.kd.op_checks import assert_compiled_matches_eager, assert_terms_and_grads_match
from tests.tolerances import assert_close, loss_dtype


def _reference(student, teacher, margin):
    ref_student = [s.detach().double().requires_grad_() for s in student]
    terms = R.activation_boundary_losses(ref_student, [t.double() for t in teacher], margin)
    weights = torch.arange(1, len(student) + 1, dtype=torch.float64)
    grads = torch.autograd.grad((weights * terms).sum(), ref_student)
    return terms, grads, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("margin", [1.0, 0.25, 0.0])
def test_cpu_matches_reference(dtype, margin):
    student, teacher = feature_pair(ODD_SHAPES, dtype, channels_last_layer=1)
    terms = activation_boundary_losses(student, teacher, margin=margin)
    ref_terms, ref_grads, weights = _reference(student, teacher, margin)
    assert_terms_and_grads_match(terms, ref_terms, ref_grads, weights, student, dtype)


@pytest.mark.parametrize("batch", [1, 2])
def test_cpu_batch_one_and_two(batch):
    student, teacher = feature_pair([(batch, 3, 5, 7), (batch, 1, 1, 9)], torch.float64)
    expected = R.activation_boundary_loss(student, teacher, margin=1.0, lambdas=[2.0, 0.5])
    assert_close(activation_boundary_loss(student, teacher, lambdas=[2.0, 0.5]), expected, torch.float64)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_matches_reference(dtype, triton_device):
    student, teacher = feature_pair([(2, 5, 3, 7), (2, 3, 4, 4)], dtype, channels_last_layer=1,
                                    requires_grad=False)
    masks = activation_boundary_teacher_summary(teacher)
    ref_terms, ref_grads, weights = _reference(student, teacher, 0.5)
    lam = weights.float()
    s, m = [x.to(triton_device) for x in student], [x.to(triton_device) for x in masks]
    *out, grads = triton_ab.ab_loss(s, m, lam.to(triton_device), 0.5, True)
    terms, losses, grads = *(x.cpu() for x in out), [g.cpu() for g in grads]
    assert losses.dtype == loss_dtype(dtype)
    assert_close(losses, ref_terms, loss_dtype(dtype))
    assert_close(terms, lam * losses, torch.float32)
    for g, s, r in zip(grads, student, ref_grads):
        assert g.dtype == dtype and g.stride() == s.stride()
        assert_close(g, r, dtype)


def test_gradcheck_fp64():
    student, teacher = feature_pair([(2, 3, 2, 3), (2, 2, 3, 1)], torch.float64)
    masks = activation_boundary_teacher_summary(teacher)
    # Keep inputs away from the hinge's kinks at ±μ, where finite differences are not defined.
    with torch.no_grad():
        for s in student:
            s.add_(torch.where((s.abs() - 0.5).abs() < 0.05, 0.2, 0.0))
    assert torch.autograd.gradcheck(
        lambda a, b: activation_boundary_losses([a, b], masks, margin=0.5), tuple(student))


def test_opcheck():
    student, teacher = feature_pair(ODD_SHAPES, torch.float32)
    masks = activation_boundary_teacher_summary(teacher)
    lam = torch.rand(len(student))
    torch.library.opcheck(torch.ops.hyperkd.ab_loss.default, (student, masks, lam, 1.0, True))
    torch.library.opcheck(torch.ops.hyperkd.ab_loss.default,
                          ([s.detach() for s in student], masks, lam, 1.0, False))


def test_compile_fullgraph():
    student, teacher = feature_pair(ODD_SHAPES[:2], torch.float32)
    masks = activation_boundary_teacher_summary(teacher)

    def loss(a, b):
        return activation_boundary_loss([a, b], masks, margin=1.0, lambdas=[1.0, 0.5])

    assert_compiled_matches_eager(loss, student, student)


def test_saves_only_the_gradients_it_returns():
    """The gradients are made in forward with the loss; neither the features nor the masks are
    kept, and backward returns those very tensors for a weight of one."""
    student, teacher = feature_pair(ODD_SHAPES, torch.float32)
    masks = activation_boundary_teacher_summary(teacher)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = activation_boundary_loss(student, masks)
    grads = torch.autograd.grad(loss, student)
    assert [t.data_ptr() for t in saved] == [g.data_ptr() for g in grads]


def test_weighted_terms_and_any_weights_on_the_unweighted_ones():
    student, teacher = feature_pair(ODD_SHAPES, torch.float64)
    ref_terms, ref_grads, weights = _reference(student, teacher, 1.0)
    terms, losses = activation_boundary_terms(student, teacher, lambdas=weights)
    assert_close(losses, ref_terms, torch.float64)
    for g, r in zip(torch.autograd.grad(terms.sum(), student), ref_grads):
        assert_close(g, r, torch.float64)
    unweighted = activation_boundary_losses(student, teacher)
    for g, r in zip(torch.autograd.grad(-(weights * unweighted).sum(), student), ref_grads):
        assert_close(g, -r, torch.float64)


def test_teacher_mask_is_a_32nd_of_the_feature():
    g = torch.randn(4, 16, 32, 32)
    mask = activation_boundary_teacher_summary(g)
    assert mask.dtype == torch.uint8 and mask.numel() * mask.element_size() * 32 == g.numel() * g.element_size()
    assert torch.equal(R.unpack_mask(mask, g[0].numel()).view_as(g), g > 0)


def test_negative_margin_is_rejected():
    student, teacher = feature_pair(ODD_SHAPES)
    with pytest.raises(ValueError, match="margin: expected margin >= 0, got -0.5"):
        activation_boundary_loss(student, teacher, margin=-0.5)


def test_wrong_mask_shape_is_rejected():
    student, teacher = feature_pair(ODD_SHAPES)
    masks = activation_boundary_teacher_summary(teacher)
    masks[1] = masks[1][:, :-1]
    with pytest.raises(ValueError, match=r"teacher\[1\]: expected a raw feature of shape \(3, 7, 3, 3\) or a packed uint8 mask"):
        activation_boundary_loss(student, masks)
