"""Eager PyTorch references, written equation by equation: the test oracle and benchmark baseline."""
from hyperkd.reference.attention_transfer import (
    attention_map,
    attention_teacher_summary,
    attention_transfer_loss,
)
from hyperkd.reference.masks import pack_positive_mask, unpack_mask

__all__ = [
    "attention_map",
    "attention_teacher_summary",
    "attention_transfer_loss",
    "pack_positive_mask",
    "unpack_mask",
]
from hyperkd.reference.activation_boundary import (activation_boundary_layer,  # noqa: E402
                                                   activation_boundary_loss,
                                                   activation_boundary_losses)

__all__ += ["activation_boundary_layer", "activation_boundary_loss", "activation_boundary_losses"]
from hyperkd.reference.relational import angles, normalised_distances, rkd_losses  # noqa: E402
from hyperkd.reference.similarity_preserving import (similarity_matrix,  # noqa: E402
                                                     similarity_preserving_losses)

__all__ += ["angles", "normalised_distances", "rkd_losses", "similarity_matrix",
            "similarity_preserving_losses"]
from hyperkd.reference.channelwise import cwd_losses, fitnets_losses  # noqa: E402

__all__ += ["cwd_losses", "fitnets_losses"]
from hyperkd.reference.fsp import fsp_losses, fsp_matrix  # noqa: E402
from hyperkd.reference.logit import logit_kd_loss  # noqa: E402

__all__ += ["fsp_losses", "fsp_matrix", "logit_kd_loss"]
