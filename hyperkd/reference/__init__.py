"""Eager PyTorch references, written equation by equation: the test oracle and benchmark baseline."""
from hyperkd.reference.attention_transfer import (
    attention_map,
    attention_teacher_summary,
    attention_transfer_loss,
)
from hyperkd.reference.masks import pack_positive_mask, unpack_mask
from hyperkd.reference.siren_decode import siren_decode

__all__ = [
    "attention_map",
    "attention_teacher_summary",
    "attention_transfer_loss",
    "pack_positive_mask",
    "siren_decode",
    "unpack_mask",
]
