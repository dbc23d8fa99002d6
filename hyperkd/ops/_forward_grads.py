"""Ops whose gradient is computed in their forward pass.

A KD loss is a scalar, and its gradient with respect to each student feature depends on the whole
row (a normalised map, a softmax), so a kernel that has just computed the row's loss holds, in
cache, everything its gradient needs. Computing the gradient there instead of in backward saves a
second read of every feature from memory; backward is left with the incoming gradient's factor.
Liger-Kernel's fused losses do the same.

That factor is 1 for a loss summed into the total as it is (fold any KD weight into ``lambdas``),
and then backward returns the stored gradients without touching them. Otherwise, and whenever the
backward is being traced (torch.compile), they are scaled out of place: one extra pass.
"""
from typing import Sequence

import torch


def wants_grad(student: Sequence[torch.Tensor]) -> bool:
    """Whether autograd will ask for the student features' gradients from this call."""
    return torch.is_grad_enabled() and any(f.requires_grad for f in student)


def _is_exactly_one(grad: torch.Tensor) -> bool:
    # Only a concrete CPU tensor can be read without a device sync or a data-dependent trace.
    return type(grad) is torch.Tensor and grad.device.type == "cpu" and grad.item() == 1.0


def scale_forward_grads(grad_loss: torch.Tensor, grads: Sequence[torch.Tensor]) -> list:
    """d(loss)/df · grad_loss for the gradients ``grads`` that forward computed for a loss of 1."""
    if not grads:
        raise RuntimeError("this loss was computed without its gradients (no student feature "
                           "required grad at the time), so it cannot be backpropagated")
    if _is_exactly_one(grad_loss):
        return list(grads)
    return list(torch._foreach_mul(list(grads), grad_loss))
