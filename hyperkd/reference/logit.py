"""Eager oracle of Hinton et al.'s logit KD as written: T² · (1/B) Σ_i Σ_k p_t,ik (log p_t,ik − log p_s,ik)
with p = softmax(z / T); the test reference for :mod:`hyperkd.kd.logit`."""
import torch


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    p_t = torch.softmax(teacher_logits / T, dim=1)
    log_p_s = torch.log_softmax(student_logits / T, dim=1)
    return T * T * (p_t * (torch.log(p_t) - log_p_s)).sum() / student_logits.shape[0]
