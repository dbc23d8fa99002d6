"""Functional entry points of the fused KD ops."""
from hyperkd.ops import attention_teacher_summary, attention_transfer_loss, pack_positive_mask

__all__ = ["attention_teacher_summary", "attention_transfer_loss", "pack_positive_mask"]
from hyperkd.ops import (activation_boundary_loss, activation_boundary_losses,  # noqa: E402
                         activation_boundary_teacher_summary)

__all__ += ["activation_boundary_loss", "activation_boundary_losses",
            "activation_boundary_teacher_summary"]
from hyperkd.ops import (gram, rkd_loss, rkd_losses, similarity_preserving_loss,  # noqa: E402
                         similarity_preserving_losses, similarity_teacher_summary)

__all__ += ["gram", "rkd_loss", "rkd_losses", "similarity_preserving_loss",
            "similarity_preserving_losses", "similarity_teacher_summary"]
from hyperkd.ops import cwd_loss, cwd_losses, fitnets_loss, fitnets_losses  # noqa: E402

__all__ += ["cwd_loss", "cwd_losses", "fitnets_loss", "fitnets_losses"]
