"""Canonical training of a teacher g(·; ζ0): cross-entropy, SGD with Nesterov momentum, model
selection on validation. The student recipes reuse the same loop (``hyperkd.train.loop``)."""
from pathlib import Path

import torch
from torch import nn

from hyperkd import data, models
from hyperkd.runtime import resolve_device
from hyperkd.train import distributed
from hyperkd.train.loop import Trainer
from hyperkd.train.step import StepOutput
from hyperkd.train.optim import SCHEDULES, lr_schedule, sgd
from hyperkd.train.run_identity import teacher_identity


def check_seed(seed) -> None:
    """Seeds go to torch, numpy and the data split, which take 0 ≤ seed < 2³²."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed: expected an integer in [0, 2**32), got {seed!r}")


def check_teacher(model: str, dataset: str, *, epochs: int, batch_size: int, lr: float, momentum: float,
                  weight_decay: float, schedule: str, seed: int, device: str = "auto") -> None:
    """Raises naming the first setting of :func:`train_teacher` that cannot run, before any work."""
    if not isinstance(model, str) or model.lower() not in models.available():
        models.create(model)  # raises, naming the close matches
    if dataset not in data.DATASETS:
        raise ValueError(f"data set must be one of {', '.join(data.DATASETS)}, got {dataset!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if not 0 < lr < float("inf"):
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
    if not 0 <= weight_decay < float("inf"):
        raise ValueError(f"weight_decay: expected a value ≥ 0, got {weight_decay!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    check_seed(seed)
    resolve_device(device)


def train_teacher(model: str, dataset: str, out: Path, *, epochs: int, batch_size: int = 128,
                  data_root=None, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                  schedule: str = "cosine", seed: int = 0, workers: int = 0, device: str = "auto",
                  resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Trains ``model`` on ``dataset``; writes ``best.pt`` (its ``model`` entry is the state_dict
    that ``hyperkd.models.create(..., checkpoint=)`` loads), ``last.pt`` and ``metrics.jsonl``.
    Under ``torchrun`` it runs as DDP, ``batch_size`` per rank. A folder that holds a run is
    refused unless ``resume`` (same settings; more epochs extend it) or ``overwrite``."""
    settings = teacher_settings(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                                weight_decay=weight_decay, schedule=schedule, seed=seed)
    check_teacher(model, dataset, device=device, **settings)
    distributed.init_from_env()
    torch.manual_seed(seed)
    dev = resolve_device(device)
    train, val, test = data.loaders(dataset, batch_size, root=data_root, workers=workers, seed=seed)
    train = distributed.shard(train, shuffle=True, seed=seed)
    val, test = distributed.shard(val, shuffle=False), distributed.shard(test, shuffle=False)
    net = models.create(model, num_classes=data.NUM_CLASSES[dataset]).to(dev)
    if distributed.active():
        net = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = sgd(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    ce = nn.CrossEntropyLoss()

    def loss_fn(x, y, epoch):
        logits = net(x)
        return StepOutput.of(logits, {"ce": ce(logits, y)})

    trainer = Trainer(net, optimizer, loss_fn, train, val, test, out_dir=out, device=dev,
                      scheduler=lr_schedule(optimizer, schedule, epochs), progress=progress,
                      identity=teacher_identity(model=model, data=dataset, **settings), overwrite=overwrite)
    return trainer.fit(epochs, resume=resume)


def teacher_settings(*, epochs, batch_size, lr, momentum, weight_decay, schedule, seed) -> dict:
    """The settings of :func:`train_teacher` that change its result (with the model and the data
    set, its run identity), by flag name."""
    return dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                schedule=schedule, seed=seed)
