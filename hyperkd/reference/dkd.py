"""Decoupled knowledge distillation (DKD, Zhao et al., CVPR 2022), equation by equation.

With p = softmax(z/T) over the K classes and t the sample's label:
  b = [p_t, 1 − p_t]                       the binary target / non-target probabilities (Eq. 1)
  p̂_i = p_i / (1 − p_t), i ≠ t             the distribution among the non-target classes (Eq. 2)
  TCKD = KL(b^T ‖ b^S),  NCKD = KL(p̂^T ‖ p̂^S)                                             (Eq. 4)
  DKD = α·TCKD + β·NCKD                                                                   (Eq. 5)
each KL scaled by T² (as in logit KD) and averaged over the batch. Probabilities are formed
explicitly: this is the test oracle, not the production path (``hyperkd.kd.dkd``).
"""
import torch
import torch.nn.functional as F


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, T: float = 4.0) -> torch.Tensor:
    p_s = F.softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits / T, dim=1)
    target_mask = F.one_hot(target, p_s.shape[1]).bool()

    def binary(p):  # Eq. 1
        p_target = p[target_mask]
        return torch.stack([p_target, 1 - p_target], dim=1)

    def non_target(p):  # Eq. 2: renormalised over the K − 1 non-target classes
        rest = p[~target_mask].reshape(len(p), -1)
        return rest / rest.sum(1, keepdim=True)

    b_s, b_t = binary(p_s), binary(p_t)
    q_s, q_t = non_target(p_s), non_target(p_t)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(1)
    nckd = (q_t * (q_t.log() - q_s.log())).sum(1)
    return (alpha * tckd + beta * nckd).mean() * T * T
