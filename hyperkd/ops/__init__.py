"""The public fused ops: custom-op registration (CPU C++, CUDA Triton or CUDA C++), fake impls for
``torch.compile``, autograd, and the functional wrappers that check their arguments."""
from hyperkd.ops.attention_transfer import (AttentionTransferLoss, attention_teacher_summary,
                                            attention_transfer_loss)
from hyperkd.ops.masks import pack_positive_mask
from hyperkd.ops.siren_decode import siren_decode

__all__ = ["AttentionTransferLoss", "attention_teacher_summary", "attention_transfer_loss",
           "pack_positive_mask", "siren_decode"]
