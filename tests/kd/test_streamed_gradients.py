"""The AT loss's CPU kernel writes its gradient planes with non-temporal stores through a
1024-element buffer (csrc/cpu/layers.h, write_streamed): planes longer than that buffer, planes
starting off 32-byte boundaries, and a channel slice (planes contiguous, samples not), against the
eager reference, for every kind of map."""
import pytest
import torch

import hyperkd.kd as kd
from hyperkd import reference as R
from tests.tolerances import assert_close

# Method spec of the fused path → the same loss from the references.
REFERENCES = {
    "at0": lambda s, t: R.attention_transfer_loss(s, t, kind=0, p=1.0),
    "at1:p=2": lambda s, t: R.attention_transfer_loss(s, t, kind=1, p=2.0),
    "at2:p=4": lambda s, t: R.attention_transfer_loss(s, t, kind=2, p=4.0),
}


def features(seed: int = 0):
    """33×35 planes (1155 elements, 4620 bytes: every channel after the first starts off a
    32-byte boundary), a 40×40 layer (two chunks per plane), and three channels sliced out of
    five (planes contiguous, samples five planes apart)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 3, 33, 35), (2, 2, 40, 40), (2, 5, 9, 13)]
    student = [torch.randn(s, generator=g) for s in shapes]
    teacher = [torch.randn(s, generator=g) for s in shapes]
    student[2], teacher[2] = student[2][:, 1:4], teacher[2][:, 1:4]
    return [s.requires_grad_() for s in student], teacher


@pytest.mark.parametrize("spec", list(REFERENCES))
def test_streamed_gradients_match_the_reference(spec):
    student, teacher = features()
    assert not student[2].is_contiguous() and student[2].stride(1) == 9 * 13
    fused = kd.layerwise_loss(spec, student, teacher)
    grads = torch.autograd.grad(fused, student)
    ref_student = [s.detach().double().requires_grad_() for s in student]
    expected = REFERENCES[spec](ref_student, [t.double() for t in teacher])
    ref_grads = torch.autograd.grad(expected, ref_student)
    assert_close(fused, expected.detach(), torch.float32)
    for m, (grad, ref) in enumerate(zip(grads, ref_grads)):
        assert grad.stride() == student[m].stride() or grad.is_contiguous()
        assert_close(grad, ref, torch.float32, scale=ref.abs().max().item(), msg=f"layer {m}")
