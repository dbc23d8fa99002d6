"""What every layer of hyperkd uses at run time, below ``hyper``, ``train`` and ``commands``: the
device (:func:`resolve_device`), top-k evaluation (:func:`topk_correct`, :func:`accuracy`), peak
memory readers, and PyTorch DDP under ``torchrun``.

DDP: process-group set-up from the environment, sharded loaders, and the reductions that make
every rank agree on metrics and model selection. Without torchrun (WORLD_SIZE unset or 1) every
function is a no-op for a single process.
"""
import os
import resource
from typing import Dict, List, Sequence, Tuple

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


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: this rank's GPU under torchrun, the GPU when there is one, else the CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device() if active() else 0)
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device: {name!r} is not a torch device (expected auto, cpu or "
                         f"cuda[:N])") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} requested but CUDA is not available")
    return device


@torch.no_grad()
def topk_correct(predict, loader, device: torch.device, ks: Sequence[int] = (1,)) -> Tuple[List[int], int]:
    """For each k of ``ks``, how many samples of ``loader`` have their label among the top k of
    ``predict(x)``; and how many samples there were. Counts stay on the device until the end."""
    counts, seen = torch.zeros(len(ks), dtype=torch.long, device=device), 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = predict(x)
        ranked = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
        hits = ranked == y.unsqueeze(1)
        counts += torch.stack([hits[:, :k].any(dim=1).sum() for k in ks])
        seen += len(y)
    return counts.tolist(), seen


def accuracy(predict, loader, device: torch.device) -> float:
    """Top-1 accuracy of ``predict`` on ``loader``, over every rank's shard under DDP."""
    (correct,), seen = topk_correct(predict, loader, device)
    correct, seen = sum_across_ranks([correct, seen], device)
    return correct / max(seen, 1)


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
