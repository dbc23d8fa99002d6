"""Fused CwD (Eq. 20–21) and FitNets (Eq. 11): C++ and Triton parity with the eager references,
gradients, opcheck, compile, memory discipline and bad input."""
import pytest
import torch

import hyperkd.kd as kd
from hyperkd import reference as R
from hyperkd.kernels import channelwise as triton_cw
from hyperkd.ops import channelwise as cw
from tests.kd.features import ODD_SHAPES, feature_pair
from tests.kd.op_checks import assert_compiled_matches_eager, saved_tensor_shapes
from tests.tolerances import assert_close

TAU = 2.0
FUSED = {"cwd": lambda s, t: cw.cwd_losses(s, t, tau=TAU), "fitnets": cw.fitnets_losses}
REFERENCE = {"cwd": lambda s, t: R.cwd_losses(s, t, TAU), "fitnets": R.fitnets_losses}


def _reference(student, teacher, method):
    ref_student = [s.detach().double().requires_grad_() for s in student]
    terms = REFERENCE[method](ref_student, [t.double() for t in teacher])
    weights = torch.arange(1, len(student) + 1, dtype=torch.float64)
    return terms.detach(), torch.autograd.grad((weights * terms).sum(), ref_student), weights


@pytest.mark.parametrize("method", ["cwd", "fitnets"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_matches_reference(method, dtype):
    student, teacher = feature_pair(ODD_SHAPES, dtype, channels_last_layer=1)
    teacher[2] = teacher[2].to(memory_format=torch.channels_last)
    terms = FUSED[method](student, teacher)
    ref_terms, ref_grads, weights = _reference(student, teacher, method)
    assert terms.dtype == dtype
    assert_close(terms, ref_terms, dtype)
    grads = torch.autograd.grad((weights.to(dtype) * terms).sum(), student)
    for g, s, r in zip(grads, student, ref_grads):
        assert g.stride() == s.stride()
        assert_close(g, r, dtype)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("method", ["cwd", "fitnets"])
def test_triton_matches_reference(method, dtype):
    student, teacher = feature_pair([(2, 5, 3, 7), (2, 3, 4, 4)], dtype, channels_last_layer=1,
                                    requires_grad=False)
    ref_terms, ref_grads, weights = _reference(student, teacher, method)
    if method == "cwd":
        terms, lse_s, lse_t = triton_cw.cwd_loss(student, teacher, TAU)
        grads = triton_cw.cwd_loss_backward(weights.float(), student, teacher, lse_s, lse_t, TAU)
    else:
        terms, norms = triton_cw.fitnets_loss(student, teacher)
        grads = triton_cw.fitnets_loss_backward(weights.float(), student, teacher, norms)
    assert_close(terms, ref_terms, dtype)
    for g, s, r in zip(grads, student, ref_grads):
        assert g.dtype == dtype and g.stride() == s.stride()
        assert_close(g, r, dtype)


@pytest.mark.parametrize("method", ["cwd", "fitnets"])
def test_gradcheck_fp64(method):
    student, teacher = feature_pair([(2, 3, 2, 3), (2, 2, 3, 1)], torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: FUSED[method]([a, b], teacher), tuple(student))


def test_opcheck():
    student, teacher = feature_pair(ODD_SHAPES, torch.float32)
    detached = [s.detach() for s in student]
    grad = torch.rand(len(student))
    torch.library.opcheck(torch.ops.hyperkd.cwd_loss.default, (student, teacher, TAU))
    _, lse_s, lse_t = torch.ops.hyperkd.cwd_loss(detached, teacher, TAU)
    torch.library.opcheck(torch.ops.hyperkd.cwd_loss_backward.default,
                          (grad, detached, teacher, lse_s, lse_t, TAU))
    torch.library.opcheck(torch.ops.hyperkd.fitnets_loss.default, (student, teacher))
    _, norms = torch.ops.hyperkd.fitnets_loss(detached, teacher)
    torch.library.opcheck(torch.ops.hyperkd.fitnets_loss_backward.default, (grad, detached, teacher, norms))


@pytest.mark.parametrize("method", ["cwd:tau=2", "fitnets"])
def test_compile_fullgraph(method):
    student, teacher = feature_pair(ODD_SHAPES[:2], torch.float32)

    def loss(a, b):
        return kd.layerwise_loss(method, [a, b], teacher, [1.0, 0.5])

    assert_compiled_matches_eager(loss, student, student)


@pytest.mark.parametrize("method", ["cwd", "fitnets"])
def test_saves_inputs_and_row_statistics_only(method):
    student, teacher = feature_pair(ODD_SHAPES, torch.float32)
    shapes = saved_tensor_shapes(lambda: FUSED[method](student, teacher))
    rows = sum(s[0] * s[1] for s in ODD_SHAPES)
    stats = [(rows,)] * (2 if method == "cwd" else 1)
    assert sorted(shapes) == sorted(ODD_SHAPES * 2 + stats)


def test_registry_names_map_to_the_fused_terms():
    student, teacher = feature_pair(ODD_SHAPES, torch.float64)
    _, terms = kd.layerwise_terms("cwd:tau=2", student, teacher)
    assert_close(terms, R.cwd_losses(student, teacher, 2.0).detach(), torch.float64)
    _, terms = kd.layerwise_terms("fitnets", student, teacher)
    assert_close(terms, R.fitnets_losses(student, teacher).detach(), torch.float64)


def test_fitnets_regressor_maps_student_channels():
    loss = cw.FitNetsLoss(regressor_channels=(3, 5))
    student, teacher = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, 4, 4)
    value = loss(student, teacher)
    value.backward()
    expected = R.fitnets_losses([loss.regressor(student)], [teacher]).sum()
    assert_close(value, expected, torch.float32)
    assert loss.regressor.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_non_positive_tau_is_rejected(tau):
    student, teacher = feature_pair(ODD_SHAPES)
    with pytest.raises(ValueError, match="tau: expected tau > 0"):
        cw.cwd_losses(student, teacher, tau=tau)
    with pytest.raises(ValueError, match="tau must be > 0"):
        kd.layerwise_loss(f"cwd:tau={tau}", student, teacher)
