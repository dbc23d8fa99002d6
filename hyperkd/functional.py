"""Functional entry points of the fused KD ops."""
from hyperkd.ops import (activation_boundary_loss, activation_boundary_losses,
                         activation_boundary_teacher_summary, attention_teacher_summary,
                         attention_transfer_loss, cwd_loss, cwd_losses, fitnets_loss, fitnets_losses,
                         gram, pack_positive_mask, rkd_loss, rkd_losses, similarity_preserving_loss,
                         similarity_preserving_losses, similarity_teacher_summary, siren_decode)

__all__ = [
    "activation_boundary_loss", "activation_boundary_losses", "activation_boundary_teacher_summary",
    "attention_teacher_summary", "attention_transfer_loss", "cwd_loss", "cwd_losses", "fitnets_loss",
    "fitnets_losses", "gram", "pack_positive_mask", "rkd_loss", "rkd_losses",
    "similarity_preserving_loss", "similarity_preserving_losses", "similarity_teacher_summary",
    "siren_decode",
]
