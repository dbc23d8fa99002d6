"""Eager PyTorch references, written equation by equation: the test oracle and benchmark baseline."""
from hyperkd.reference.activation_boundary import (activation_boundary_layer, activation_boundary_loss,
                                                   activation_boundary_losses)
from hyperkd.reference.attention_transfer import (attention_map, attention_teacher_summary,
                                                  attention_transfer_loss)
from hyperkd.reference.channelwise import cwd_losses, fitnets_losses
from hyperkd.reference.fsp import fsp_losses, fsp_matrix
from hyperkd.reference.hyper_generate import encode_gamma, hidden_code, hyper_generate
from hyperkd.reference.logit import logit_kd_loss
from hyperkd.reference.masks import pack_positive_mask, unpack_mask
from hyperkd.reference.relational import angles, normalised_distances, rkd_losses
from hyperkd.reference.siren_decode import siren_decode
from hyperkd.reference.similarity_preserving import similarity_matrix, similarity_preserving_losses

__all__ = [
    "activation_boundary_layer", "activation_boundary_loss", "activation_boundary_losses", "angles",
    "attention_map", "attention_teacher_summary", "attention_transfer_loss", "cwd_losses",
    "encode_gamma", "fitnets_losses", "fsp_losses", "fsp_matrix", "hidden_code", "hyper_generate",
    "logit_kd_loss", "normalised_distances", "pack_positive_mask", "rkd_losses", "similarity_matrix",
    "similarity_preserving_losses", "siren_decode", "unpack_mask",
]
