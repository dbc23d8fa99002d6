"""The training phases of the paper on a :class:`Representation`, all driven by ``Trainer``.

- ``reconstruct`` (§3.1, Eq. 1 with α = β = 0): MSE between decoded and target kernels on a kernel
  batch per step; with probability ``p_uniform`` (0.8) a uniform batch, otherwise one drawn ∝ kernel
  L2 norm (NeRN, App. D.2). ``kd_weight`` α and ``fmd_weight`` β > 0 add α·L_KD + β·L_FMD (the
  joint baseline of Eq. 1).
- ``progressive`` (§3.1, App. D.2): round r reconstructs round r−1's decoded net; a round is kept
  only if its validation accuracy beats its target's, and the rounds stop at the first that does not.
- ``decouple`` (§3.2–3.3): phase 2 fine-tunes a reconstructed predictor with logit KD only, from the
  original or another (stronger) teacher; ``noise=True`` feeds U[−1, 1] inputs (App. B, data-free).

Every phase evaluates the decoded CNN on val/test and writes ``metrics.jsonl``, atomic
``best.pt``/``last.pt`` and resumes exactly, as ``hyperkd.train.loop.Trainer`` does. One step is one
batch of the train loader, so phases compared "at equal steps" run equal epochs.
"""
import copy
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from hyperkd.siren.representation import Representation
from hyperkd.train.checkpoint import load_checkpoint
from hyperkd.train.loop import Trainer
from hyperkd.train.step import StepOutput

P_UNIFORM = 0.8
KERNEL_BATCH = 4096
TEMPERATURE = 4.0
# Phase 2's Adam lr. Adam's first steps move every predictor weight by ~lr at once, and through a
# SIREN (ω0 = 30, five layers) that coherent move is amplified: on ResNet-20/digits one step at 1e-4
# (or ten at 1e-5) turned the decoded CNN into a dead net (every ReLU off, constant logits, zero
# gradient) that never recovered, while 2e-6 took the phase-1 net from 19 % to 97 % val in 40 steps
# (docs/siren.md, "Why phase 2 collapsed").
DECOUPLE_LR = 2e-6


def kd_loss(student_logits, teacher_logits, temperature: float = TEMPERATURE) -> torch.Tensor:
    """L_KD of Eq. 1: KL(teacher ‖ student) of the softened outputs, scaled by T² (Hinton et al.)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean") * temperature ** 2


class ConvFeatures:
    """Forward hooks keeping every conv output of ``net`` from its latest forward (for L_FMD).

    Hooks fire under ``torch.func.functional_call`` too, so the decoded net's features keep their
    graph to the predictor.
    """

    def __init__(self, net: nn.Module):
        self.outputs = []
        self._handles = [m.register_forward_hook(lambda _m, _i, out: self.outputs.append(out))
                         for m in net.modules() if isinstance(m, nn.Conv2d)]

    def take(self) -> list:
        outputs, self.outputs = self.outputs, []
        return outputs

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self.outputs = []


def fmd_loss(student_features, teacher_features) -> torch.Tensor:
    """L_FMD of Eq. 1: (1/|B|) Σ_i Σ_l ‖a_i^l − â_i^l‖₂ with per-sample L2-normalised feature maps."""
    total = 0.0
    for s, t in zip(student_features, teacher_features):
        a = F.normalize(s.flatten(1), dim=1)
        b = F.normalize(t.flatten(1), dim=1)
        total = total + (a - b).norm(dim=1).mean()
    return total


class KernelSampler:
    """NeRN's kernel batches: uniform with probability ``p_uniform``, otherwise ∝ ‖kernel‖₂.

    Draws from the global torch generator, which ``Trainer`` checkpoints, so resuming repeats them.
    """

    def __init__(self, targets: torch.Tensor, batch: int = KERNEL_BATCH, p_uniform: float = P_UNIFORM):
        if not 0.0 <= p_uniform <= 1.0:
            raise ValueError(f"p_uniform: expected a probability in [0, 1], got {p_uniform!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"kernel_batch: expected a positive integer, got {batch!r}")
        self.count = targets.shape[0]
        self.batch = batch
        self.norms = targets.norm(dim=1).clamp_min(1e-12)
        self.p_uniform = p_uniform

    def __call__(self) -> torch.Tensor:
        if torch.rand(()) < self.p_uniform:
            return torch.randint(0, self.count, (self.batch,))
        return torch.multinomial(self.norms, self.batch, replacement=True)


def valid_mask(rep: Representation) -> torch.Tensor:
    """N×P² mask of the kernel entries a k×k conv actually uses (its centre), for the MSE."""
    side = int(round(rep.predictor.output_size ** 0.5))
    mask = torch.zeros(rep.layout.num_kernels, side, side, dtype=torch.bool)
    for s in rep.layout.slots:
        lo = (side - s.kernel_size) // 2
        mask[s.start:s.stop, lo:lo + s.kernel_size, lo:lo + s.kernel_size] = True
    return mask.reshape(rep.layout.num_kernels, -1)


def padded_targets(rep: Representation, target: nn.Module) -> torch.Tensor:
    """The target net's kernels laid out like the predictor's P×P output."""
    kernels = rep.layout.gather_kernels(target).reshape(rep.layout.num_kernels, rep.layout.kernel_size,
                                                        rep.layout.kernel_size)
    pad = (int(round(rep.predictor.output_size ** 0.5)) - rep.layout.kernel_size) // 2
    return F.pad(kernels, (pad, pad, pad, pad)).reshape(rep.layout.num_kernels, -1)


def masked_mse(predicted: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the kernel entries ``mask`` marks (see :func:`valid_mask`)."""
    return ((predicted - targets).square() * mask).sum() / mask.sum()


def _trainer(rep, optimizer, loss_fn, loaders, out, device, progress, epochs):
    train, val, test = loaders
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return Trainer(rep, optimizer, loss_fn, train, val, test, out_dir=Path(out), device=device,
                   scheduler=scheduler, predict=rep.logits, progress=progress)


def reconstruct(rep: Representation, target: nn.Module, loaders, out, *, epochs: int,
                lr: float = 5e-3, kernel_batch: int = KERNEL_BATCH, p_uniform: float = P_UNIFORM,
                kd_weight: float = 0.0, fmd_weight: float = 0.0, teacher: Optional[nn.Module] = None,
                resume: bool = False, device=torch.device("cpu"), progress: bool = False) -> dict:
    """Phase 1: L_recon, plus ``kd_weight``·L_KD + ``fmd_weight``·L_FMD against ``teacher``
    (default ``target``) for the joint baseline of Eq. 1. L_FMD compares every conv output, so it
    needs a teacher of the seed's architecture. Returns the Trainer's best record."""
    for name, value in (("kd_weight", kd_weight), ("fmd_weight", fmd_weight)):
        if value < 0:
            raise ValueError(f"{name}: expected ≥ 0, got {value!r}")
    rep.to(device)
    targets = padded_targets(rep, target).to(device)
    mask = valid_mask(rep).to(device)
    sampler = KernelSampler(targets, kernel_batch, p_uniform)
    teacher = (teacher or target).to(device).eval()

    joint = kd_weight > 0 or fmd_weight > 0
    if fmd_weight > 0:
        student_taps, teacher_taps = ConvFeatures(rep.seed), ConvFeatures(teacher)

    def loss_fn(x, y, epoch):
        batch = sampler().to(device)
        if not joint:
            predicted = rep.predictor(rep.coords[batch], backend=rep.backend)
            return StepOutput.of(None, {"recon": masked_mse(predicted, targets[batch], mask[batch])})
        decoded = rep.decode()
        if fmd_weight > 0:  # drop what evaluation forwards left in the taps
            student_taps.take(), teacher_taps.take()
        logits = rep.logits(x, decoded)
        with torch.no_grad():
            teacher_logits = teacher(x)
        terms = {"recon": masked_mse(decoded[batch], targets[batch], mask[batch]),
                 "kd": kd_weight * kd_loss(logits, teacher_logits)}
        if fmd_weight > 0:
            terms["fmd"] = fmd_weight * fmd_loss(student_taps.take(), teacher_taps.take())
        return StepOutput.of(logits, terms)

    optimizer = torch.optim.Adam(rep.predictor.parameters(), lr=lr)
    try:
        return _trainer(rep, optimizer, loss_fn, loaders, out, device, progress, epochs).fit(
            epochs, resume=resume)
    finally:
        if fmd_weight > 0:
            student_taps.remove(), teacher_taps.remove()


def decouple(rep: Representation, teacher: Optional[nn.Module], loaders, out, *, epochs: int,
             lr: float = DECOUPLE_LR, kd_weight: float = 1.0, temperature: float = TEMPERATURE,
             noise: bool = False, resume: bool = False, device=torch.device("cpu"),
             progress: bool = False) -> dict:
    """Phase 2: fine-tune the predictor with α·L_KD only (paper §3.2; App. B with ``noise``).

    The decoded CNN keeps the original's BatchNorm in eval mode (``Representation.train``): its
    running statistics are never updated, by images or by noise; only the predictor trains."""
    if not isinstance(teacher, nn.Module):
        raise ValueError("teacher: decouple distils from a teacher network; pass the original net "
                         f"or a stronger one, got {type(teacher).__name__}")
    rep.to(device)
    teacher = teacher.to(device).eval()

    def loss_fn(x, y, epoch):
        if noise:
            x = torch.rand_like(x) * 2 - 1
        logits = rep.logits(x)
        with torch.no_grad():
            teacher_logits = teacher(x)
        return StepOutput.of(logits, {"kd": kd_weight * kd_loss(logits, teacher_logits, temperature)})

    optimizer = torch.optim.Adam(rep.predictor.parameters(), lr=lr)
    return _trainer(rep, optimizer, loss_fn, loaders, out, device, progress, epochs).fit(epochs, resume=resume)


def progressive(original: nn.Module, loaders, out, *, rounds: int, epochs: int, baseline_val: float,
                representation_options: dict, resume: bool = False, **reconstruct_options) -> list:
    """Rounds of reconstruction, each targeting the last kept round's decoded net (§3.1).

    ``baseline_val`` is the original's validation accuracy. Returns one record per round trained,
    with ``kept``; training stops after the first round that does not improve.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected an integer ≥ 1, got {rounds!r}")
    target, target_val, history = original, baseline_val, []
    for r in range(1, rounds + 1):
        rep = Representation(target, **representation_options)
        round_dir = Path(out) / f"round{r}"
        best = reconstruct(rep, target, loaders, round_dir, epochs=epochs, resume=resume,
                           **reconstruct_options)
        kept = best["val_acc"] > target_val
        history.append({"round": r, **best, "target_val_acc": target_val, "kept": kept})
        if not kept:
            break
        rep.load_state_dict(load_checkpoint(round_dir / "best.pt")["model"])
        target, target_val = rep.materialise(), best["val_acc"]
    return history


def load_representation(seed: nn.Module, checkpoint, **representation_options) -> Representation:
    """A Representation of ``seed`` restored from a phase's ``best.pt`` or ``last.pt``."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    rep = Representation(seed, **representation_options)
    rep.load_state_dict(load_checkpoint(path)["model"])
    return rep


@torch.no_grad()
def distance(a: nn.Module, b: nn.Module) -> float:
    """RMS difference of all conv weights of two nets with the same architecture."""
    pairs = [(m.weight, n.weight) for m, n in zip(a.modules(), b.modules()) if isinstance(m, nn.Conv2d)]
    total = sum(float((x - y).square().sum()) for x, y in pairs)
    return math.sqrt(total / sum(x.numel() for x, _ in pairs))


def interpolate(original: nn.Module, reconstructed: nn.Module, alpha: float) -> nn.Module:
    """f((1 − α)·w_o + α·w̄) of App. F: every parameter and buffer interpolated."""
    net = copy.deepcopy(original)
    with torch.no_grad():
        for p, q in zip(net.state_dict().values(), reconstructed.state_dict().values()):
            if p.is_floating_point():
                p.copy_((1 - alpha) * p + alpha * q)
    return net
