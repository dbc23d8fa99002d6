"""Checks every fused KD op gets: which tensors autograd saves, opcheck, and compile."""
import torch

from tests.tolerances import assert_close


def saved_tensor_shapes(fn, *args):
    """Shapes of every tensor autograd saves while ``fn(*args)`` builds its graph."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return shapes


def assert_compiled_matches_eager(fn, args, grad_of):
    """fullgraph torch.compile of ``fn`` on the CPU gives the eager value and gradient w.r.t.
    ``grad_of``, to fp32 tolerance."""
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager_out = fn(*args)
    compiled_out = compiled(*args)
    assert_close(compiled_out, eager_out, torch.float32)
    for c, e in zip(torch.autograd.grad(compiled_out, grad_of), torch.autograd.grad(eager_out, grad_of)):
        assert_close(c, e, torch.float32)


def assert_terms_and_grads_match(terms, ref_terms, ref_grads, weights, student, dtype,
                                 same_strides=True):
    """Per-layer loss ``terms`` equal the reference's, in ``dtype``, and so do the gradients of
    their ``weights``-weighted sum w.r.t. each ``student`` feature, which keep its strides
    (channels_last in, channels_last out) unless ``same_strides`` is False."""
    assert terms.dtype == dtype
    assert_close(terms, ref_terms, dtype)
    grads = torch.autograd.grad((weights.to(dtype) * terms).sum(), student)
    for g, s, r in zip(grads, student, ref_grads):
        assert not same_strides or g.stride() == s.stride()
        assert_close(g, r, dtype)
