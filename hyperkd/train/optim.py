"""The canonical CIFAR recipe: SGD with Nesterov momentum 0.9, weight decay 5e-4, and a cosine or
multistep learning-rate schedule over the run."""
from typing import Sequence

import torch

SCHEDULES = ("cosine", "multistep")


def sgd(params, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
        nesterov: bool = True) -> torch.optim.SGD:
    if not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


def lr_schedule(optimizer, kind: str, epochs: int,
                milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1):
    """``cosine`` anneals to 0 over ``epochs``; ``multistep`` multiplies by ``gamma`` at the given
    fractions of the run (the paper's CIFAR recipes use halves and three-quarters)."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "multistep":
        steps = sorted({max(1, round(f * epochs)) for f in milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=gamma)
    raise ValueError(f"schedule: expected one of {SCHEDULES}, got {kind!r}")
