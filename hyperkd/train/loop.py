"""The epoch loop every hyperkd command trains with (LayerKD-HN Algorithm 1's outer loop).

Each epoch trains on the train split, evaluates top-1 accuracy on validation, and — when validation
improved — on test too, saving ``best.pt`` (the paper's model selection). ``last.pt`` is written
atomically after every epoch with everything an exact resume needs: weights, optimizer and
scheduler state, any extra stateful objects (a hypernetwork, KD modules), RNG states and the
shuffling generator of the train loader. A step (``train_step(x, y, epoch)``, e.g. a
:class:`~hyperkd.train.step.DistillStep`) returns the loss and its named terms; a NaN or inf term
stops the run with its name.

Under ``torchrun`` (DDP) each rank trains on its shard, losses and accuracies are summed over the
ranks so that every rank takes the same model-selection decisions, and only rank 0 writes.

fp16 training (e.g. on a T4, without fast bf16) runs the forward under ``torch.autocast`` inside
the step and passes a ``torch.amp.GradScaler`` as ``scaler``: the loss is scaled before
backward, steps with inf/NaN gradients are skipped, and the scaler's state is checkpointed.
"""
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from hyperkd.hyper import HyperOptimizer
from hyperkd.runtime import accuracy, peak_memory_bytes, reset_peak_memory
from hyperkd.train import distributed
from hyperkd.train.checkpoint import (load_checkpoint, remove_stale_temp_files, restore_rng_state, rng_state,
                                     save_checkpoint)
from hyperkd.train.metrics import MetricsLog
from hyperkd.train.run_identity import check_out_dir, plain, start_afresh
from hyperkd.train.step import StepOutput

TrainStep = Callable[[torch.Tensor, torch.Tensor, int], StepOutput]


# Steps between updates of the progress bar's running loss (read in the step's one host copy).
PROGRESS_EVERY = 25


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the term, the epoch and the step.

    ``term``, ``layer`` (the first per-layer term that is not finite, when known), ``epoch`` and
    ``step`` are kept as attributes (None when the raiser gave only a message), so that a sweep can
    record the stop; :meth:`first_of` builds the error from a step's named values."""

    def __init__(self, message: str, *, term: Optional[str] = None, layer: Optional[str] = None,
                 epoch: Optional[int] = None, step: Optional[int] = None):
        super().__init__(message)
        self.term, self.layer, self.epoch, self.step = term, layer, epoch, step

    @classmethod
    def first_of(cls, values: Dict[str, float], epoch: int, step: int) -> "NonFiniteLossError":
        """The error for a step whose ``values`` hold a NaN or inf: term name → value, such as
        ``loss`` (the total), ``ce``, ``kd`` or ``kd/<spec>``, and per-layer terms below them
        (``kd/<layer>``, ``kd/<spec>/<layer>``). ``term`` is the first non-finite term nearest the
        top (the total only when nothing below it is named), ``layer`` the first non-finite layer
        below that term."""
        bad = {name: value for name, value in values.items() if not math.isfinite(value)}
        named = [name for name in bad if name != "loss"] or list(bad)
        term = min(named, key=lambda name: name.count("/"))
        layer = next((name[len(term) + 1:] for name in named if name.startswith(term + "/")), None)
        at = f" (first at layer {layer!r})" if layer else ""
        return cls(f"loss term {term!r} is {bad[term]}{at} at epoch {epoch}, step {step}: stopping "
                   f"instead of training on it", term=term, layer=layer, epoch=epoch, step=step)


@dataclass
class Trainer:
    """Trains ``model`` with ``train_step(x, y, epoch) -> StepOutput``: its ``loss`` is minimised,
    and the loss and its named ``terms`` are checked for NaN/inf and logged as epoch means
    (:meth:`StepOutput.of` builds one from a dict of terms to sum).

    A step whose loss does not classify the batch (e.g. weight reconstruction) returns ``None``
    logits; its epochs then record no ``train_acc``.

    ``predict(x)`` gives the logits used for evaluation (default: ``model(x)`` in eval mode).
    ``stateful`` maps names to extra objects with ``state_dict``/``load_state_dict`` that must be
    checkpointed with the model. ``on_epoch`` is called with the epoch index before it trains (to
    set λ schedules) and returns a dict merged into that epoch's metrics record.

    ``scaler``: a ``torch.amp.GradScaler`` for fp16 loss scaling; a fused :class:`HyperOptimizer`
    must have been built with the same one (it unscales W's gradient factors itself).

    ``identity``: the run's settings as a plain dict (:mod:`hyperkd.train.run_identity`), stored
    in ``last.pt`` and ``summary.json``; a resume refuses a ``last.pt`` of other settings. ``fit``
    refuses an ``out_dir`` that holds a run unless it resumes it or ``overwrite`` is set (which
    deletes the old run's files first).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_step: TrainStep
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
    identity: Optional[dict] = None
    overwrite: bool = False

    def __post_init__(self):
        if (isinstance(self.optimizer, HyperOptimizer) and self.optimizer.fused
                and self.optimizer.scaler is not self.scaler):
            raise ValueError("scaler: a fused HyperOptimizer unscales W's gradient factors itself, so it "
                             "needs the Trainer's scaler: build it with HyperOptimizer(..., scaler=scaler)")
        self.out_dir = Path(self.out_dir)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl")
        self.best = {"epoch": -1, "val_acc": -math.inf, "test_acc": None}
        self.identity = None if self.identity is None else plain(self.identity)
        self._epochs = None

    # -- one epoch ---------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        """One pass over the train split; the means of the loss, its terms and the accuracy.

        The host waits for the device once per step, to check that no term is NaN or inf before
        the optimizer applies it (and, on the progress bar's steps, to read the running loss in
        the same copy); the sums stay on the device until the epoch ends."""
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        names, sums, correct, count = None, None, None, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}", leave=False, disable=not self._show_bar())
        for step, (x, y) in enumerate(bar):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            out = self.train_step(x, y, epoch)
            if names is None:
                names = [*out.terms, "loss"]
            values = torch.stack([*out.terms.values(), out.loss.detach()]).double()  # sums as the host would
            show = step % PROGRESS_EVERY == 0 and not bar.disable and sums is not None
            finite = torch.isfinite(values).all().float().reshape(1)
            host = torch.cat([finite, sums[len(names) - 1:len(names)] / count]).tolist() if show else [finite.item()]
            if not host[0]:
                self._stop(names, values, epoch, step)
            if show:
                bar.set_postfix(loss=f"{host[1]:.4f}")
            self.optimizer.zero_grad(set_to_none=True)
            (out.loss if self.scaler is None else self.scaler.scale(out.loss)).backward()
            if self.grad_norm:
                values = torch.cat([values, self._grad_norm().double().reshape(1)])
            self._step()
            n = len(y)
            count += n
            sums = values * n if sums is None else sums + values * n
            if out.logits is not None:
                hits = (out.logits.argmax(1) == y).sum()
                correct = hits if correct is None else correct + hits
        if self.scheduler is not None:
            self.scheduler.step()
        names = (names or []) + (["grad_norm"] if self.grad_norm else [])
        totals = sums.tolist() if sums is not None else []
        if correct is not None:
            names, totals = names + ["train_acc"], totals + [float(correct)]
        *totals, count = distributed.sum_across_ranks(totals + [count], self.device)
        return {k: v / max(count, 1) for k, v in sorted(zip(names, totals))}

    @staticmethod
    def _stop(names, values, epoch: int, step: int):
        """Raises naming the first loss term that is NaN or inf (and its first such layer)."""
        raise NonFiniteLossError.first_of(dict(zip(names, values.tolist())), epoch, step)

    def _grad_norm(self) -> torch.Tensor:
        """The global norm of the gradients, unscaled first when the loss was scaled (then inf or NaN
        on a step that the scaler skips)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        return torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])

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
        return accuracy(self.predict or self.model, loader, self.device)

    def _show_bar(self) -> bool:
        """A progress bar only on a terminal: in a log, each redraw would be a line of its own
        (``fit`` prints one line per epoch instead)."""
        return self.progress and distributed.is_main() and sys.stderr.isatty()

    # -- the run -------------------------------------------------------------------------------
    def fit(self, epochs: int, resume: bool = False) -> dict:
        """Trains until ``epochs`` epochs are done; with ``resume``, continues from ``last.pt``
        (a larger ``epochs`` than the run had extends it, see :meth:`_resume`)."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
        check_out_dir(self.out_dir, self.identity, resume=resume, overwrite=self.overwrite)
        if distributed.is_main():
            remove_stale_temp_files(self.out_dir)
            if self.overwrite or (resume and not (self.out_dir / "last.pt").exists()):
                start_afresh(self.out_dir)
        self._epochs = epochs
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
                # The checkpoint first: a kill between the two leaves a line short, which the
                # checkpoint's copy of the record restores on resume (never a line twice).
                save_checkpoint(self.out_dir / "last.pt", self._state(epoch, record))
                self.metrics.append(record)
                if self.progress:
                    print(epoch_line(record), file=sys.stderr, flush=True)
        if distributed.is_main():
            self._write_summary()
        return dict(self.best)

    def _write_summary(self) -> None:
        """``summary.json``: the selected epoch, mean epoch time and the run's peak memory, from
        the metrics log (so a resumed run summarises all of its epochs)."""
        records = self.metrics.records()
        summary = {**self.best, "epochs": len(records),
                   "mean_epoch_time_s": sum(r["epoch_time_s"] for r in records) / max(len(records), 1),
                   "peak_memory_bytes": max((r["peak_memory_bytes"] for r in records), default=0),
                   "identity": self.identity}
        tmp = self.out_dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.out_dir / "summary.json")

    def _model_state(self) -> dict:
        """The model's own state_dict: without DDP's ``module.`` prefix."""
        return getattr(self.model, "module", self.model).state_dict()

    def _stateful_dicts(self) -> dict:
        return {name: obj.state_dict() for name, obj in self.stateful.items()}

    def _state(self, epoch: int, record: dict) -> dict:
        return {
            "epoch": epoch,
            "epochs": self._epochs,
            "identity": self.identity,
            "record": record,
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
        """Restores ``last.pt``; returns its epoch (−1 when there is nothing to resume).

        A run resumed with more epochs than it was started with continues on the lr schedule of a
        run of the new length, from the epoch it reached: the schedule is rebuilt rather than
        restored, since a finished schedule (cosine at 0) would train nothing."""
        path = self.out_dir / "last.pt"
        if not path.exists():
            return -1
        state = load_checkpoint(path, map_location=self.device)
        extend = self.scheduler is not None and state.get("epochs") not in (None, self._epochs)
        if extend:
            lrs = self._schedule_at(state["epoch"] + 1)
        try:
            getattr(self.model, "module", self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise ValueError(f"--resume: {path} does not fit this run's model or optimizer; was it "
                             f"trained with other flags? ({str(err).splitlines()[0]})") from err
        if extend:
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
        elif self.scheduler is not None:
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
            self.metrics.resume_after(state["epoch"], state.get("record"))
        return state["epoch"]

    def _schedule_at(self, epochs_done: int) -> list:
        """Steps the freshly built scheduler through ``epochs_done`` epochs; returns each param
        group's lr there."""
        with warnings.catch_warnings():  # no optimizer step between these scheduler steps, by design
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(epochs_done):
                self.scheduler.step()
        return [group["lr"] for group in self.optimizer.param_groups]


def epoch_line(record: dict) -> str:
    """One line per epoch for logs: loss, accuracies, lr and time."""
    parts = [f"epoch {record['epoch']}", f"loss {record['loss']:.4f}" if "loss" in record else None,
             f"train {record['train_acc']:.4f}" if "train_acc" in record else None,
             f"val {record['val_acc']:.4f}",
             None if record.get("test_acc") is None else f"test {record['test_acc']:.4f} (best)",
             f"lr {record['lr']:.4g}", f"{record['epoch_time_s']:.1f} s"]
    return "  ".join(p for p in parts if p)
