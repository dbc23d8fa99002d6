"""The epoch loop every hyperkd command trains with (LayerKD-HN Algorithm 1's outer loop).

Each epoch trains on the train split, evaluates top-1 accuracy on validation, and — when validation
improved — on test too, saving ``best.pt`` (the paper's model selection). ``last.pt`` is written
atomically after every epoch with everything an exact resume needs: weights, optimizer and
scheduler state, any extra stateful objects (a hypernetwork, KD modules), RNG states and the
shuffling generator of the train loader. The loss of a step is a dict of named terms whose sum is
minimised; a NaN or inf term stops the run with its name.

Under ``torchrun`` (DDP) each rank trains on its shard, losses and accuracies are summed over the
ranks so that every rank takes the same model-selection decisions, and only rank 0 writes.

fp16 training (e.g. on a T4, without fast bf16) runs the forward under ``torch.autocast`` inside
``loss_fn`` and passes a ``torch.amp.GradScaler`` as ``scaler``: the loss is scaled before
backward, steps with inf/NaN gradients are skipped, and the scaler's state is checkpointed.
"""
import json
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from hyperkd.hyper import HyperOptimizer
from hyperkd.train import distributed
from hyperkd.train.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from hyperkd.train.metrics import MetricsLog

LossFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, Dict[str, torch.Tensor]]"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the term, the epoch and the step."""


@dataclass
class Trainer:
    """Trains ``model`` with ``loss_fn(x, y) -> (logits, {term: loss}[, {name: value}])``: the
    terms are summed and minimised; the optional third dict (e.g. per-layer KD terms) is only
    checked for NaN/inf and logged.

    A step whose loss does not classify the batch (e.g. weight reconstruction) returns ``None``
    logits; its epochs then record no ``train_acc``.

    ``predict(x)`` gives the logits used for evaluation (default: ``model(x)`` in eval mode).
    ``stateful`` maps names to extra objects with ``state_dict``/``load_state_dict`` that must be
    checkpointed with the model. ``on_epoch`` is called with the epoch index before it trains (to
    set λ schedules) and returns a dict merged into that epoch's metrics record.

    ``scaler``: a ``torch.amp.GradScaler`` for fp16 loss scaling; a fused :class:`HyperOptimizer`
    must have been built with the same one (it unscales W's update inside backward).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    test_loader: torch.utils.data.DataLoader
    out_dir: Path
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    predict: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    stateful: Dict[str, object] = field(default_factory=dict)
    on_epoch: Optional[Callable[[int], dict]] = None
    device: torch.device = torch.device("cpu")
    progress: bool = True
    grad_norm: bool = False
    scaler: Optional[torch.amp.GradScaler] = None

    def __post_init__(self):
        if (isinstance(self.optimizer, HyperOptimizer) and self.optimizer.fused
                and self.optimizer.scaler is not self.scaler):
            raise ValueError("scaler: a fused HyperOptimizer unscales W's update inside backward, so it "
                             "needs the Trainer's scaler: build it with HyperOptimizer(..., scaler=scaler)")
        self.out_dir = Path(self.out_dir)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl")
        self.best = {"epoch": -1, "val_acc": -math.inf, "test_acc": None}

    # -- one epoch ---------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        sums, count = {}, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}", leave=False,
                   disable=not (self.progress and distributed.is_main()))
        for step, (x, y) in enumerate(bar):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            logits, terms, *logs = self.loss_fn(x, y)
            logged = {**terms, **(logs[0] if logs else {})}
            for name, value in logged.items():
                if not torch.isfinite(value).all():
                    raise NonFiniteLossError(f"loss term {name!r} is {value.item()} at epoch {epoch}, "
                                             f"step {step}: stopping instead of training on it")
            total = sum(terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            (total if self.scaler is None else self.scaler.scale(total)).backward()
            if self.grad_norm:
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + self._grad_norm() * len(y)
            self._step()
            n = len(y)
            count += n
            for name, value in logged.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) * n
            sums["loss"] = sums.get("loss", 0.0) + float(total.detach()) * n
            if logits is not None:
                sums["train_acc"] = sums.get("train_acc", 0.0) + float((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        if self.scheduler is not None:
            self.scheduler.step()
        names = sorted(sums)
        *totals, count = distributed.sum_across_ranks([sums[k] for k in names] + [count], self.device)
        return {k: v / max(count, 1) for k, v in zip(names, totals)}

    def _grad_norm(self) -> float:
        """The global norm of the gradients, unscaled first when the loss was scaled (then inf or NaN
        on a step that the scaler skips)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        return float(torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters()
                                                    if p.grad is not None]))

    def _step(self) -> None:
        """The optimizer step; through the scaler, which skips it on inf/NaN gradients and then
        adapts the loss scale."""
        if self.scaler is None:
            self.optimizer.step()
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()

    @torch.no_grad()
    def accuracy(self, loader) -> float:
        """Top-1 accuracy of ``predict`` on ``loader``."""
        self.model.eval()
        predict = self.predict or self.model
        correct = total = 0
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            correct += int((predict(x).argmax(1) == y).sum())
            total += len(y)
        correct, total = distributed.sum_across_ranks([correct, total], self.device)
        return correct / max(total, 1)

    # -- the run -------------------------------------------------------------------------------
    def fit(self, epochs: int, resume: bool = False) -> dict:
        """Trains until ``epochs`` epochs are done; with ``resume``, continues from ``last.pt``."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
        start = self._resume() + 1 if resume else 0
        for epoch in range(start, epochs):
            record = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"],
                      **(self.on_epoch(epoch) if self.on_epoch else {})}
            if not reset_peak_memory(self.device):  # warnings shows it once per call site
                warnings.warn("peak_memory_bytes: this system ignored the reset of the RSS "
                              "high-water mark, so each epoch reports the process's peak so far")
            began = time.perf_counter()
            record.update(self.train_epoch(epoch))
            record["epoch_time_s"] = time.perf_counter() - began
            record["val_acc"] = self.accuracy(self.val_loader)
            if record["val_acc"] > self.best["val_acc"]:
                self.best = {"epoch": epoch, "val_acc": record["val_acc"],
                             "test_acc": self.accuracy(self.test_loader)}
                if distributed.is_main():
                    save_checkpoint(self.out_dir / "best.pt", {"model": self._model_state(),
                                                               "stateful": self._stateful_dicts(),
                                                               "best": self.best})
            record["test_acc"] = self.best["test_acc"] if self.best["epoch"] == epoch else None
            record["peak_memory_bytes"] = peak_memory_bytes(self.device)
            if distributed.is_main():
                self.metrics.append(record)
                save_checkpoint(self.out_dir / "last.pt", self._state(epoch))
        if distributed.is_main():
            self._write_summary()
        return dict(self.best)

    def _write_summary(self) -> None:
        """``summary.json``: the selected epoch, mean epoch time and the run's peak memory, from
        the metrics log (so a resumed run summarises all of its epochs)."""
        records = self.metrics.records()
        summary = {**self.best, "epochs": len(records),
                   "mean_epoch_time_s": sum(r["epoch_time_s"] for r in records) / max(len(records), 1),
                   "peak_memory_bytes": max((r["peak_memory_bytes"] for r in records), default=0)}
        tmp = self.out_dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.out_dir / "summary.json")

    def _model_state(self) -> dict:
        """The model's own state_dict: without DDP's ``module.`` prefix."""
        return getattr(self.model, "module", self.model).state_dict()

    def _stateful_dicts(self) -> dict:
        return {name: obj.state_dict() for name, obj in self.stateful.items()}

    def _state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": self._model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "stateful": self._stateful_dicts(),
            "best": self.best,
            "rng": rng_state(),
            "train_generator": self._train_generator_state(),
        }

    def _train_generator_state(self):
        """The shuffling generator's state; None under DDP, where a sharded loader's order
        depends on (seed, epoch) alone."""
        return None if distributed.active() else self._train_generator().get_state()

    def _train_generator(self) -> torch.Generator:
        generator = getattr(self.train_loader, "generator", None)
        if generator is None:
            raise ValueError("train_loader: expected a DataLoader built with a torch.Generator "
                             "(hyperkd.data.loaders does this), so that resuming repeats its order")
        return generator

    def _resume(self) -> int:
        """Restores ``last.pt``; returns its epoch (−1 when there is nothing to resume)."""
        path = self.out_dir / "last.pt"
        if not path.exists():
            return -1
        state = load_checkpoint(path, map_location=self.device)
        getattr(self.model, "module", self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        for name, obj in self.stateful.items():
            obj.load_state_dict(state["stateful"][name])
        self.best = state["best"]
        restore_rng_state(state["rng"])
        if state["train_generator"] is not None:
            self._train_generator().set_state(state["train_generator"])
        if distributed.is_main():
            self.metrics.resume_after(state["epoch"])
        return state["epoch"]


def reset_peak_memory(device: torch.device) -> bool:
    """Starts a new peak: the CUDA allocator's, or on Linux the process's RSS high-water mark
    (so that several runs in one process, as in a sweep, each report their own peak).

    Returns whether the peak did restart. Some kernels and sandboxes accept the write to
    ``/proc/self/clear_refs`` and ignore it; there VmHWM stays above VmRSS, and the CPU peak
    stays the process's since it started."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        status = _proc_status_kib(("VmHWM", "VmRSS"))
    except (OSError, KeyError):
        return False
    return status["VmHWM"] <= status["VmRSS"]


def _proc_status_kib(keys) -> Dict[str, int]:
    """The named kiB fields of ``/proc/self/status``, read in one pass."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].split()[0]) for k in keys}


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocator bytes on CUDA since :func:`reset_peak_memory`; on the CPU the peak RSS since
    then (VmHWM), or the process's peak RSS where /proc is not available."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        return _proc_status_kib(("VmHWM",))["VmHWM"] * 1024
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
