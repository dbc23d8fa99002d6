"""Functional entry points of the fused KD ops."""
from hyperkd.ops import attention_teacher_summary, attention_transfer_loss, pack_positive_mask

__all__ = ["attention_teacher_summary", "attention_transfer_loss", "pack_positive_mask"]
from hyperkd.ops import (activation_boundary_loss, activation_boundary_losses,  # noqa: E402
                         activation_boundary_teacher_summary)

__all__ += ["activation_boundary_loss", "activation_boundary_losses",
            "activation_boundary_teacher_summary"]
