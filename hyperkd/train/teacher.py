"""Canonical training of a teacher g(·; ζ0): cross-entropy, SGD with Nesterov momentum, model
selection on validation. The student recipes reuse the same loop (``hyperkd.train.loop``)."""
from pathlib import Path

import torch
from torch import nn

from hyperkd import data, models
from hyperkd.train import distributed
from hyperkd.train.loop import Trainer
from hyperkd.train.optim import lr_schedule, sgd


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: this rank's GPU under torchrun, the GPU when there is one, else the CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device() if distributed.active() else 0)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return device


def train_teacher(model: str, dataset: str, out: Path, *, epochs: int, batch_size: int = 128,
                  data_root=None, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                  schedule: str = "cosine", seed: int = 0, workers: int = 0, device: str = "auto",
                  resume: bool = False, progress: bool = True) -> dict:
    """Trains ``model`` on ``dataset``; writes ``best.pt`` (its ``model`` entry is the state_dict
    that ``hyperkd.models.create(..., checkpoint=)`` loads), ``last.pt`` and ``metrics.jsonl``.
    Under ``torchrun`` it runs as DDP, ``batch_size`` per rank."""
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

    def loss_fn(x, y):
        logits = net(x)
        return logits, {"ce": ce(logits, y)}

    trainer = Trainer(net, optimizer, loss_fn, train, val, test, out_dir=out, device=dev,
                      scheduler=lr_schedule(optimizer, schedule, epochs), progress=progress)
    return trainer.fit(epochs, resume=resume)
