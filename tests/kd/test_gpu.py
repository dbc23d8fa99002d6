"""The fused KD ops on a real GPU (Triton kernels, and bf16, which the interpreter gets wrong):
the registry's terms and gradients against the eager references evaluated in fp64 on the CPU."""
import pytest
import torch

import hyperkd.kd as kd
from hyperkd import reference as R
from tests.tolerances import assert_close, assert_close_to_magnitude, loss_dtype

pytestmark = pytest.mark.gpu

REFERENCES = {
    "ab:margin=1": lambda s, t: R.activation_boundary_losses(s, t, 1.0),
    "sp": R.similarity_preserving_losses,
    "rkd-da": lambda s, t: R.rkd_losses(s, t, 0.5, 0.5),
    "cwd:tau=4": lambda s, t: R.cwd_losses(s, t, 4.0),
    "fitnets": R.fitnets_losses,
}
SHAPES = [(16, 16, 32, 32), (16, 32, 16, 16), (16, 64, 8, 8), (16, 5, 7, 3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", list(REFERENCES))
def test_cuda_matches_reference(method, dtype):
    student = [torch.randn(s, dtype=torch.float64).to(dtype) for s in SHAPES]
    teacher = [torch.randn(s, dtype=torch.float64).to(dtype) for s in SHAPES]
    student[1] = student[1].to(memory_format=torch.channels_last)
    cuda_student = [s.cuda().requires_grad_() for s in student]
    _, terms = kd.layerwise_terms(method, cuda_student, [t.cuda() for t in teacher])
    weights = torch.arange(1.0, len(SHAPES) + 1)
    total, _ = kd.layerwise_terms(method, cuda_student, [t.cuda() for t in teacher], weights.tolist())
    grads = torch.autograd.grad(total, cuda_student)
    ref_student = [s.double().requires_grad_() for s in student]
    ref_terms = REFERENCES[method](ref_student, [t.double() for t in teacher])
    ref_grads = torch.autograd.grad((weights.double() * ref_terms).sum(), ref_student)
    assert terms.dtype == loss_dtype(dtype)
    assert_close(terms.cpu(), ref_terms.detach(), loss_dtype(dtype))
    for m, (g, r) in enumerate(zip(grads, ref_grads)):
        # SP and RKD gradients are 1e-7..1e-3, below bf16's atol: compare at the magnitude of the
        # layer's reference gradient, so that an all-zero gradient cannot pass.
        assert r.abs().amax() > 0 and g.abs().amax() > 0, f"layer {m}: zero gradient"
        assert_close_to_magnitude(g.cpu(), r, dtype, msg=f"grad {m}")
