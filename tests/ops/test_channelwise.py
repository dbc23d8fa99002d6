"""Fused CwD (Eq. 20–21) and FitNets (Eq. 11): C++ and Triton parity with the eager references,
gradients, opcheck, compile, memory discipline and bad input."""
import pytest
import torch

import hyperkd.kd as kd
from hyperkd import reference as R
from hyperkd.kernels import channelwise as triton_cw
from hyperkd.ops import channelwise as cw
from tests.kd.features import ODD_SHAPES, feature_pair
from tests.kd.op_checks import assert_compiled_matches_eager, assert_terms_and_grads_match
from tests.tolerances import assert_close, loss_dtype

TAU = 2.0
FUSED = {"cwd": lambda s, t: cw.cwd_losses(s, t, tau=TAU), "fitnets": cw.fitnets_losses}
REFERENCE = {"cwd": lambda s, t: R.cwd_losses(s, t, TAU), "fitnets": R.fitnets_losses}
FUSED_SUM = {"cwd": lambda s, t: cw.cwd_loss(s, t, tau=TAU), "fitnets": cw.fitnets_loss}


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
    assert_terms_and_grads_match(terms, ref_terms, ref_grads, weights, student, dtype)


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("method", ["cwd", "fitnets"])
def test_triton_matches_reference(method, dtype, triton_device):
    student, teacher = feature_pair([(2, 5, 3, 7), (2, 3, 4, 4)], dtype, channels_last_layer=1,
                                    requires_grad=False)
    ref_terms, ref_grads, weights = _reference(student, teacher, method)
    lam = weights.float()
    s, t = [x.to(triton_device) for x in student], [x.to(triton_device) for x in teacher]
    if method == "cwd":
        *out, grads = triton_cw.cwd_loss(s, t, lam.to(triton_device), TAU, True)
    else:
        *out, grads = triton_cw.fitnets_loss(s, t, lam.to(triton_device), True)
    terms, losses, grads = *(x.cpu() for x in out), [g.cpu() for g in grads]
    assert losses.dtype == loss_dtype(dtype)
    assert_close(losses, ref_terms, loss_dtype(dtype))
    assert_close(terms, lam * losses, torch.float32)
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
    lam = torch.rand(len(student))
    torch.library.opcheck(torch.ops.hyperkd.cwd_loss.default, (student, teacher, lam, TAU, True))
    torch.library.opcheck(torch.ops.hyperkd.cwd_loss.default, (detached, teacher, lam, TAU, False))
    torch.library.opcheck(torch.ops.hyperkd.fitnets_loss.default, (student, teacher, lam, True))
    torch.library.opcheck(torch.ops.hyperkd.fitnets_loss.default, (detached, teacher, lam, False))


@pytest.mark.parametrize("method", ["cwd:tau=2", "fitnets"])
def test_compile_fullgraph(method):
    student, teacher = feature_pair(ODD_SHAPES[:2], torch.float32)

    def loss(a, b):
        return kd.layerwise_loss(method, [a, b], teacher, [1.0, 0.5])

    assert_compiled_matches_eager(loss, student, student)


@pytest.mark.parametrize("method", ["cwd", "fitnets"])
def test_saves_only_the_gradients_it_returns(method):
    """Forward computes the student gradients; nothing else (no input, softmax or statistic) is
    kept, and backward returns those very tensors for a weight of one."""
    student, teacher = feature_pair(ODD_SHAPES, torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = FUSED_SUM[method](student, teacher)
    grads = torch.autograd.grad(loss, student)
    assert [t.data_ptr() for t in saved] == [g.data_ptr() for g in grads]


@pytest.mark.parametrize("method", ["cwd", "fitnets"])
def test_per_layer_weights_and_unweighted_terms(method):
    """λ in the call weights the gradients; the per-layer vector backpropagates any weights."""
    student, teacher = feature_pair(ODD_SHAPES, torch.float64)
    ref_terms, ref_grads, weights = _reference(student, teacher, method)
    terms_of = cw.cwd_terms if method == "cwd" else cw.fitnets_terms
    options = {"tau": TAU} if method == "cwd" else {}
    terms, losses = terms_of(student, teacher, lambdas=weights, **options)
    assert_close(losses, ref_terms, torch.float64)
    assert_close(terms, weights * ref_terms, torch.float64)
    for g, r in zip(torch.autograd.grad(terms.sum(), student), ref_grads):
        assert_close(g, r, torch.float64)
    unweighted = FUSED[method](student, teacher)
    for g, r in zip(torch.autograd.grad(-(weights * unweighted).sum(), student), ref_grads):
        assert_close(g, -r, torch.float64)


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
