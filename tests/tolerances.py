"""Parity tolerances, one place, justified by dtype.

Fused kernels accumulate in fp32 (fp64 for fp64 inputs) but sum in a different order than the
eager reference, so a result built from n terms may differ by about n·eps·|terms|; the rtol below
allows reductions of up to ~10^2–10^3 terms per output before it would trip. fp16/bf16 results are
stored in the low-precision dtype, so their error floor is one rounding of the output (half an
ulp: 2^-11 for fp16, 2^-8 for bf16) plus the accumulated error, hence a few ulps of slack.
"""
import torch

# dtype: (rtol, atol). atol covers outputs that cancel to ~0 where rtol is meaningless.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),  # eps 2.2e-16 × ~10^3 terms, with margin
    torch.float32: (2e-5, 1e-6),  # eps 1.2e-7 × ~10^2 terms
    torch.float16: (4e-3, 1e-4),  # 2^-11 = 4.9e-4 per rounding, a few roundings
    torch.bfloat16: (3e-2, 1e-3),  # 2^-8 = 3.9e-3 per rounding, a few roundings
}


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype fused losses are accumulated and returned in for features of ``dtype``: fp32, or
    fp64 for fp64 features. A loss from half-precision features is held to fp32's tolerance (its
    inputs are exact in fp32); only gradients stored in the features' dtype get that dtype's."""
    return torch.promote_types(dtype, torch.float32)


def tolerance(dtype: torch.dtype):
    return TOLERANCES[dtype]


def assert_close(actual, expected, dtype: torch.dtype, *, scale: float = 1.0, msg: str = ""):
    """Compares with the tolerance of ``dtype`` (the inputs' dtype, not the output's);
    ``scale`` widens atol for quantities whose natural magnitude is ``scale``."""
    rtol, atol = TOLERANCES[dtype]
    # Below the smallest normal number the spacing is fixed (2^-24 for fp16): one rounding there.
    info = torch.finfo(dtype)
    atol = max(atol * scale, info.tiny * info.eps)
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol,
                               msg=(lambda m: f"{msg}: {m}") if msg else None)


def assert_close_to_magnitude(actual, expected, dtype: torch.dtype, *, msg: str = ""):
    """As :func:`assert_close`, with atol = rtol·max|expected|, for tensors whose elements cancel to
    far below their largest (a gradient summed over B² sample pairs): each element's rounding
    error is relative to the terms it sums, which are of the tensor's largest magnitude, not to
    the element itself. An all-zero ``actual`` fails against any non-zero ``expected``."""
    rtol, _ = TOLERANCES[dtype]
    atol = max(rtol * float(expected.abs().amax()), torch.finfo(dtype).tiny)
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol,
                               msg=(lambda m: f"{msg}: {m}") if msg else None)
