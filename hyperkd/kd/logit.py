"""Classic logit KD (Hinton et al. 2015): T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over
the classes and averaged over the batch (``batchmean``)."""
import torch
import torch.nn.functional as F


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    log_ps = F.log_softmax(student_logits / T, dim=1)
    log_pt = F.log_softmax(teacher_logits / T, dim=1)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * T * T
