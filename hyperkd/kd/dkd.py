"""Decoupled knowledge distillation (DKD, Zhao et al., CVPR 2022) as a registered KD method on
B×K logits: T²·[α·KL(b^T ‖ b^S) + β·KL(p̂^T ‖ p̂^S)], batch mean, where b = [p_t, 1 − p_t] are
the target / non-target probabilities and p̂ the distribution among the non-target classes
(Eq. 1-5; the oracle is ``hyperkd.reference.dkd``). The KD weight ramps up linearly over the
first ``warmup`` epochs, as in the authors' CIFAR recipe.

Computed in log space: log p_t and log(1 − p_t) from log-sum-exps over all classes and over the
non-target ones, so no probability is subtracted from 1 and no 0·log 0 appears.

DKD needs each sample's label, which the layer-wise interface does not carry: a training step
calls :meth:`DecoupledKD.bind_batch` before the loss (``needs_batch``). The warm-up is a ramp on
λ_m (:meth:`warmup_factor`), which :class:`~hyperkd.kd.layerkd.LayerKD` applies and logs with the
schedule's λ_m.
"""
import torch

from hyperkd.kd.base import LayerwiseMethod
from hyperkd.kd.registry import MethodEntry, register


def dkd_terms(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, T: float):
    """Per-sample (TCKD, NCKD), each × T²."""
    target_mask = torch.zeros_like(student, dtype=torch.bool).scatter_(1, target[:, None], True)
    dtype = torch.promote_types(student.dtype, torch.float32)  # fp32 at least, fp64 kept
    z_s, z_t = student.to(dtype) / T, teacher.to(dtype) / T
    lse_s, lse_t = z_s.logsumexp(1), z_t.logsumexp(1)
    rest_s = z_s.masked_fill(target_mask, float("-inf")).logsumexp(1)
    rest_t = z_t.masked_fill(target_mask, float("-inf")).logsumexp(1)
    # Binary distributions (Eq. 1): log p_t and log(1 − p_t).
    log_b_s = torch.stack([z_s.gather(1, target[:, None])[:, 0] - lse_s, rest_s - lse_s], 1)
    log_b_t = torch.stack([z_t.gather(1, target[:, None])[:, 0] - lse_t, rest_t - lse_t], 1)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1)
    # Non-target distributions (Eq. 2); the target column has zero teacher mass and a finite gap.
    q_t = z_t.masked_fill(target_mask, float("-inf")).softmax(1)
    gap = (z_t - rest_t[:, None]) - (z_s - rest_s[:, None])
    nckd = (q_t * gap).sum(1)
    return tckd * T * T, nckd * T * T


class DecoupledKD(LayerwiseMethod):
    """DKD at temperature T with weights α (TCKD) and β (NCKD), warmed up over ``warmup`` epochs."""

    feature_rank = 2
    default_tap = "logits"
    native_reduction = "mean"
    #: The step must call :meth:`bind_batch` with the labels and the epoch before the loss.
    needs_batch = True

    def __init__(self, alpha: float, beta: float, T: float, warmup: float):
        self.alpha, self.beta, self.T, self.warmup = alpha, beta, T, warmup
        self.name = f"dkd:alpha={alpha:g},beta={beta:g},T={T:g},warmup={warmup:g}"
        self._target = None

    def bind_batch(self, labels: torch.Tensor) -> None:
        """This batch's labels, for the next loss (the epoch enters through :meth:`warmup_factor`)."""
        self._target = labels

    def warmup_factor(self, epoch: int) -> float:
        """min((epoch + 1)/warmup, 1): the authors' min(epoch/warmup, 1) with epochs counted from 1."""
        return 1.0 if self.warmup <= 0 else min((epoch + 1) / self.warmup, 1.0)

    def layer_losses(self, student, summaries):
        if self._target is None:
            raise ValueError(f"{self.name}: no labels bound; the step must call bind_batch(labels)")
        losses = []
        for m, (s, t) in enumerate(zip(student, summaries)):
            if s.dim() != 2 or s.shape != t.shape or len(s) != len(self._target):
                raise ValueError(f"{self.name}: layer {m} expects B×K logits of equal shapes and B labels, got "
                                 f"student {tuple(s.shape)}, teacher {tuple(t.shape)}, {len(self._target)} labels")
            tckd, nckd = dkd_terms(s, t, self._target, self.T)
            losses.append((self.alpha * tckd + self.beta * nckd).mean())
        return torch.stack(losses)


def _positive(x):
    return x > 0


register("dkd", MethodEntry(DecoupledKD, {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20.0},
                            {"alpha": (lambda x: x >= 0, ">= 0"), "beta": (lambda x: x >= 0, ">= 0"),
                             "T": (_positive, "> 0"), "warmup": (lambda x: x >= 0, ">= 0 epochs")},
                            "decoupled KD: alpha*TCKD + beta*NCKD on logits, KD weight warmed up over warmup epochs"))
