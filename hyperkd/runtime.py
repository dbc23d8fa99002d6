"""What every layer of hyperkd uses at run time, below ``hyper``, ``train`` and ``commands``.

PyTorch DDP under ``torchrun``: process-group set-up from the environment, sharded loaders, and
the reductions that make every rank agree on metrics and model selection. Without torchrun
(WORLD_SIZE unset or 1) every function is a no-op for a single process.
"""
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset


def init_from_env() -> bool:
    """Joins the process group that torchrun describes in the environment; True when distributed."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Only rank 0 writes files and prints."""
    return rank() == 0


def shard(loader: DataLoader, shuffle: bool, seed: int = 0) -> DataLoader:
    """The same loader over this rank's shard of its data set.

    Training (``shuffle``) uses a DistributedSampler, reshuffled by ``set_epoch``. Evaluation
    takes every world_size-th sample from this rank's index on, without the padding a
    DistributedSampler adds, so accuracies summed over the ranks are exact.
    """
    if not active():
        return loader
    options = dict(batch_size=loader.batch_size, num_workers=loader.num_workers,
                   pin_memory=loader.pin_memory, collate_fn=loader.collate_fn,
                   persistent_workers=loader.num_workers > 0)
    if shuffle:
        sampler = DistributedSampler(loader.dataset, num_replicas=world_size(), rank=rank(),
                                     shuffle=True, seed=seed)
        return DataLoader(loader.dataset, sampler=sampler, **options)
    indices = range(rank(), len(loader.dataset), world_size())
    return DataLoader(Subset(loader.dataset, indices), shuffle=False, **options)


def sum_across_ranks(values, device) -> list:
    """Element-wise sums of a list of numbers over all ranks (identity for one process)."""
    if not active():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
