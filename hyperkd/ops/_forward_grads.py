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

from hyperkd.ops._checks import accumulation_dtype, layer_weights


def wants_grad(student: Sequence[torch.Tensor]) -> bool:
    """Whether autograd will ask for the student features' gradients from this call."""
    return torch.is_grad_enabled() and any(f.requires_grad for f in student)


def fake_outputs(student, with_grad: bool, scalar: bool):
    """The fake impl's (out, losses, grads) of a forward-gradient op: ``out`` a scalar loss or the
    M per-layer terms, ``losses`` the M unweighted terms, ``grads`` shaped and strided as the
    students (none without ``with_grad``)."""
    first, M = student[0], len(student)
    acc = accumulation_dtype(first.dtype)
    grads = [torch.empty_like(f) for f in student] if with_grad else []
    return first.new_empty(() if scalar else (M,), dtype=acc), first.new_empty(M, dtype=acc), grads


def call_weighted(op, student, teacher, lambdas, *options):
    """``op(student, teacher, λ, *options, with_grad)`` of a forward-gradient op, λ_m as a tensor
    in the accumulation dtype (all ones when None); returns its first two outputs."""
    lam = layer_weights(lambdas, len(student), student[0], accumulation_dtype(student[0].dtype))
    out, losses, _ = op(student, teacher, lam, *options, wants_grad(student))
    return out, losses


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
