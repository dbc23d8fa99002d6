"""Ops whose gradient is computed in their forward pass.

A KD loss is a scalar, and its gradient with respect to each student feature depends on the whole
row (a normalised map, a softmax), so a kernel that has just computed the row's loss holds, in
cache, everything its gradient needs. Computing the gradient there instead of in backward saves a
second read of every feature from memory; backward is left with the incoming gradient's factor.
Liger-Kernel's fused losses do the same.

That factor is 1 for a loss summed into the total as it is (fold any KD weight into ``lambdas``),
and then backward returns the stored gradients without touching them (on the CPU; on CUDA reading
the factor would sync the device, so they are always scaled). Otherwise, and whenever the
backward is being traced (torch.compile), they are scaled out of place: one extra pass.
"""
from typing import Sequence

import torch


def wants_grad(student: Sequence[torch.Tensor]) -> bool:
    """Whether autograd will ask for the student features' gradients from this call."""
    return torch.is_grad_enabled() and any(f.requires_grad for f in student)


def _all_ones(grad: torch.Tensor) -> bool:
    # Only a concrete CPU tensor can be read without a device sync or a data-dependent trace.
    return type(grad) is torch.Tensor and grad.device.type == "cpu" and bool((grad == 1).all())


def scale_forward_grads(grad: torch.Tensor, grads: Sequence[torch.Tensor]) -> list:
    """The gradients ``grads`` that forward computed for an output of ones, times the output's
    incoming gradient ``grad``: a scalar for a scalar loss, or one factor per layer for per-layer
    terms (layer m's term depends on layer m's feature alone)."""
    if not grads:
        raise RuntimeError("this loss was computed without its gradients (no student feature "
                           "required grad at the time), so it cannot be backpropagated")
    if _all_ones(grad):
        return list(grads)
    factors = grad.unbind() if grad.dim() else [grad] * len(grads)
    return [g * w.to(g.dtype) for g, w in zip(grads, factors)]


def register_forward_grad_autograd(qualname: str) -> None:
    """Autograd for an op ``(Tensor[] student, Tensor[] teacher, ...) -> (out, losses, grads)``
    whose differentiable output ``out`` (a scalar loss or the per-layer terms) comes with its
    gradients ``grads`` for an incoming gradient of ones; ``losses`` is for logging."""

    def setup_context(ctx, inputs, output):
        _, losses, grads = output
        ctx.mark_non_differentiable(losses, *grads)
        # Otherwise autograd hands backward zero-filled gradients for the outputs nobody used.
        ctx.set_materialize_grads(False)
        ctx.layers, ctx.options = len(inputs[0]), len(inputs) - 2
        ctx.save_for_backward(*grads)

    def backward(ctx, grad, _losses, _grads):
        none = (None,) * ctx.options
        if grad is None:  # the differentiable output was not used
            return ([None] * ctx.layers, [None] * ctx.layers) + none
        return (scale_forward_grads(grad, ctx.saved_tensors), [None] * ctx.layers) + none

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
