"""``hyperkd::pack_positive_mask``: the activation-boundary teacher summary ρ = [g > 0] (LayerKD-HN
Eq. 8) packed to bits, 1/32 of an fp32 feature. C++ on the CPU, hand-written CUDA on the GPU."""
import torch

from hyperkd import _C  # noqa: F401  (registers the schema and kernels)


@torch.library.register_fake("hyperkd::pack_positive_mask")
def _pack_positive_mask_fake(x):
    per_sample = x.numel() // x.shape[0]
    return x.new_empty(x.shape[0], (per_sample + 7) // 8, dtype=torch.uint8)


def pack_positive_mask(x: torch.Tensor) -> torch.Tensor:
    """B×⌈N/8⌉ uint8: bit j of byte k is ``x.flatten(1)[:, 8k + j] > 0``."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError("x: expected a tensor with a non-empty batch dimension")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating dtype, got {x.dtype}")
    return torch.ops.hyperkd.pack_positive_mask(x.detach())
