"""Checks every fused KD op gets: which tensors autograd saves, opcheck, and compile."""
import torch


def saved_tensor_shapes(fn, *args):
    """Shapes of every tensor autograd saves while ``fn(*args)`` builds its graph."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return shapes


def compiled_matches_eager(fn, args, grad_of):
    """fullgraph torch.compile of ``fn`` on the CPU: same value and same gradient w.r.t. ``grad_of``."""
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager_out = fn(*args)
    compiled_out = compiled(*args)
    eager_grad = torch.autograd.grad(eager_out, grad_of)
    compiled_grad = torch.autograd.grad(compiled_out, grad_of)
    return eager_out, compiled_out, eager_grad, compiled_grad
