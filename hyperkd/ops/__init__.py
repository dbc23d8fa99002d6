"""The public fused ops: custom-op registration (CPU C++, CUDA Triton or CUDA C++), fake impls for
``torch.compile``, autograd, and the functional wrappers that check their arguments."""
from hyperkd.ops.activation_boundary import (ActivationBoundaryLoss, activation_boundary_loss,
                                             activation_boundary_losses,
                                             activation_boundary_teacher_summary,
                                             activation_boundary_terms)
from hyperkd.ops.affinity import affinity_loss, affinity_losses, affinity_teacher_summary
from hyperkd.ops.attention_transfer import (AttentionTransferLoss, attention_teacher_summary,
                                            attention_transfer_loss)
from hyperkd.ops.channelwise import (ChannelWiseDistillationLoss, FitNetsLoss, cwd_loss, cwd_losses,
                                     cwd_terms, fitnets_loss, fitnets_losses, fitnets_terms)
from hyperkd.ops.hyper_generate import hyper_generate
from hyperkd.ops.jsd_map import JSDMapLoss, jsd_map_loss, jsd_map_teacher_summary, jsd_map_terms
from hyperkd.ops.masks import pack_positive_mask
from hyperkd.ops.relational import (RelationalLoss, SimilarityPreservingLoss, gram, rkd_loss, rkd_losses,
                                    similarity_preserving_loss, similarity_preserving_losses,
                                    similarity_teacher_summary)
from hyperkd.ops.siren_decode import siren_decode

__all__ = [
    "ActivationBoundaryLoss", "AttentionTransferLoss", "ChannelWiseDistillationLoss", "FitNetsLoss",
    "RelationalLoss", "SimilarityPreservingLoss",
    "activation_boundary_loss", "activation_boundary_losses", "activation_boundary_teacher_summary",
    "activation_boundary_terms", "affinity_loss", "affinity_losses", "affinity_teacher_summary",
    "attention_teacher_summary", "attention_transfer_loss", "cwd_loss",
    "cwd_losses", "cwd_terms", "fitnets_loss", "fitnets_losses", "fitnets_terms", "gram",
    "hyper_generate", "JSDMapLoss", "jsd_map_loss", "jsd_map_teacher_summary", "jsd_map_terms",
    "pack_positive_mask", "rkd_loss", "rkd_losses",
    "similarity_preserving_loss", "similarity_preserving_losses", "similarity_teacher_summary",
    "siren_decode",
]
