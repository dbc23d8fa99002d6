"""Functional entry points of the fused KD ops."""
from hyperkd.ops import (attention_teacher_summary, attention_transfer_loss, pack_positive_mask,
                         siren_decode)

__all__ = ["attention_teacher_summary", "attention_transfer_loss", "pack_positive_mask", "siren_decode"]
