"""Functional entry points of the fused KD ops."""
from hyperkd.ops import (activation_boundary_loss, activation_boundary_losses,
                         activation_boundary_teacher_summary, activation_boundary_terms,
                         affinity_loss, affinity_losses, affinity_teacher_summary,
                         attention_teacher_summary, attention_transfer_loss, cwd_loss, cwd_losses,
                         cwd_terms, fitnets_loss, fitnets_losses, fitnets_terms,
                         gram, pack_positive_mask, rkd_loss, rkd_losses, similarity_preserving_loss,
                         similarity_preserving_losses, similarity_teacher_summary, siren_decode)

__all__ = [
    "activation_boundary_loss", "activation_boundary_losses", "activation_boundary_teacher_summary",
    "activation_boundary_terms", "affinity_loss", "affinity_losses", "affinity_teacher_summary",
    "attention_teacher_summary", "attention_transfer_loss", "cwd_loss",
    "cwd_losses", "cwd_terms", "fitnets_loss", "fitnets_losses", "fitnets_terms", "gram",
    "pack_positive_mask", "rkd_loss", "rkd_losses",
    "similarity_preserving_loss", "similarity_preserving_losses", "similarity_teacher_summary",
    "siren_decode",
]
