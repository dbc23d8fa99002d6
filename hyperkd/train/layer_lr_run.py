"""A student run with the JSD map loss and layer-wise learning rates (§3.4), on the one
distillation step (:class:`~hyperkd.train.step.DistillStep`) and the one loop
(:class:`~hyperkd.train.loop.Trainer`): the paper's experiment grid as a function.

``lr_mode`` selects the rows of the paper's tables: ``"none"`` (a constant rate, no schedule),
``"constant"`` (MultiStepLR at fixed epochs: the paper's "constant update") and ``"layerwise"``
(MultiStepLR, and every ``every`` epochs the crucial layers' rates from :class:`LayerLR`).
"""
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from hyperkd import data, models
from hyperkd.kd import LayerKD, Uniform, make_method
from hyperkd.kd.crucial import crucial_layers
from hyperkd.train.layer_lr import LayerLR
from hyperkd.train.loop import Trainer
from hyperkd.train.optim import lr_schedule, sgd
from hyperkd.train.step import DistillStep, KDTerm

LR_MODES = ("none", "constant", "layerwise")


class ObservedStep(nn.Module):
    """A :class:`DistillStep` whose per-layer KD terms also feed :meth:`LayerLR.observe`."""

    def __init__(self, step: DistillStep, layer_lr: LayerLR, label: str):
        super().__init__()
        self.step, self.layer_lr, self.label = step, layer_lr, label

    def forward(self, x, y, epoch):
        out = self.step(x, y, epoch)
        self.layer_lr.observe({j: out.terms[f"kd/{self.label}/{j}"] for j in self.layer_lr.layers})
        return out


def train_with_layer_lr(out: Path, *, teacher_checkpoint: Path, teacher_model: str = "resnet18",
                        model: str = "resnet10", kd: str = "jsd:map=attention", kd_weight: float = 1.0,
                        lr_mode: str = "layerwise", every: int = 25, rule: str = "ema_inverse",
                        epochs: int = 200, milestones: Sequence[float] = (0.5, 0.75), lr: float = 0.1,
                        batch_size: int = 128, dataset: str = "digits", data_root=None, seed: int = 0,
                        device: str = "cpu", pairs: Sequence[str] = (), progress: bool = False,
                        overwrite: bool = False) -> dict:
    """Trains ``model`` from ``teacher_checkpoint`` with ``kd`` (``"none"`` for CE alone) at the
    crucial layers; writes metrics.jsonl (with ``layer_lr`` and ``layer_divergence`` per epoch in
    ``"layerwise"`` mode, also plotted to ``layer_lr.png``), summary.json and the checkpoints;
    returns the best epoch's record."""
    if lr_mode not in LR_MODES:
        raise ValueError(f"lr_mode: expected one of {', '.join(LR_MODES)}, got {lr_mode!r}")
    torch.manual_seed(seed)
    dev = torch.device(device)
    train, val, test = data.loaders(dataset, batch_size, root=data_root, seed=seed)
    classes = data.NUM_CLASSES[dataset]
    student = models.create(model, num_classes=classes).to(dev)
    teacher = models.create(teacher_model, num_classes=classes, checkpoint=teacher_checkpoint)
    teacher = teacher.to(dev).eval().requires_grad_(False)
    layers = crucial_layers(student, teacher, pairs)
    s_layers, t_layers = [s for s, _ in layers], [t for _, t in layers]
    terms = []
    if kd != "none":
        method = make_method(kd)
        if hasattr(method, "attach"):
            method.attach(student, teacher, s_layers, t_layers)
        terms = [KDTerm("jsd", LayerKD(method, student, teacher, s_layers, teacher_layers=t_layers,
                                       schedule=Uniform()), kd_weight)]
    step = DistillStep(student, teacher if terms else None, terms, epochs=epochs, lambda0=1.0)
    layer_lr = LayerLR(every=every, rule=rule) if lr_mode == "layerwise" else None
    if layer_lr is not None:
        if not terms:
            raise ValueError("lr_mode: layerwise rates read the KD terms; give a --kd method")
        optimizer = sgd(layer_lr.param_groups(student, s_layers, lr), lr=lr)
    else:
        optimizer = sgd(student.parameters(), lr=lr)
    scheduler = None if lr_mode == "none" else lr_schedule(optimizer, "multistep", epochs, milestones=milestones)

    def on_epoch(epoch: int) -> dict:
        record = step.epoch_record(epoch)
        if layer_lr is not None and epoch > 0:
            record.update(layer_lr.end_epoch(epoch - 1, optimizer, scheduler))
        return record

    train_step = ObservedStep(step, layer_lr, "jsd") if layer_lr is not None else step
    trainer = Trainer(student, optimizer, train_step, train, val, test, out_dir=out, device=dev,
                      scheduler=scheduler, predict=step.predict, on_epoch=on_epoch, progress=progress,
                      stateful={"layer_lr": layer_lr} if layer_lr is not None else {}, overwrite=overwrite)
    try:
        best = trainer.fit(epochs)
    finally:
        step.remove()
    if layer_lr is not None:
        plot_layer_rates(out / "metrics.jsonl", out / "layer_lr.png")
    return best


def plot_layer_rates(metrics: Path, path: Path) -> Path:
    """Per crucial layer over epochs: its rate (``layer_lr``) and its mean map divergence
    (``layer_divergence``, of the epoch before), from a run's metrics.jsonl, as one PNG."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics).read_text().splitlines()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in zip(axes, ("layer_lr", "layer_divergence"), ("learning rate", "JSD (epoch before)")):
        series = [(r["epoch"], r[key]) for r in records if r.get(key)]
        for layer in dict.fromkeys(k for _, values in series for k in values):
            ax.plot([e for e, v in series], [v[layer] for _, v in series], marker="o", markersize=3, label=layer)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
