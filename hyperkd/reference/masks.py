"""Bit-packed activation masks: the teacher summary of activation-boundary KD (LayerKD-HN Eq. 8,
ρ = 1 where the teacher's pre-activation is > 0), stored at 1/32 of an fp32 feature."""
import torch

_BIT_WEIGHTS = 2 ** torch.arange(8, dtype=torch.int32)


def pack_positive_mask(x: torch.Tensor) -> torch.Tensor:
    """Per sample, bit j of byte k is ``x.flatten(1)[:, 8k + j] > 0`` (little-endian within a byte)."""
    bits = (x.reshape(x.shape[0], -1) > 0).to(torch.int32)
    pad = (-bits.shape[1]) % 8
    bits = torch.nn.functional.pad(bits, (0, pad)).view(x.shape[0], -1, 8)
    return (bits * _BIT_WEIGHTS.to(x.device)).sum(dim=2).to(torch.uint8)


def unpack_mask(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_positive_mask`: a bool B×numel mask."""
    bits = (packed.to(torch.int32).unsqueeze(2) // _BIT_WEIGHTS.to(packed.device)) % 2
    return bits.flatten(1)[:, :numel].bool()
