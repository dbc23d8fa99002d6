"""Checkpoints that never lose work: written to a temporary file in the target's folder, flushed to
disk, then renamed over the target (atomic on POSIX), so a run killed mid-write leaves the previous
checkpoint intact; a kill during the very first write leaves only a hidden ``.*.tmp`` file, which
:func:`remove_stale_temp_files` sweeps when the next run in that folder starts. RNG states of
python, numpy and torch travel with the checkpoints for an exact resume.

Every temporary file hyperkd writes beside a result is named ``.<target>.<random>.tmp`` or
``.<target>.tmp``."""
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(path, state: dict) -> Path:
    """Atomically writes ``state`` (anything ``torch.save`` takes) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temp_files(folder) -> list:
    """Deletes the temporary files that killed writes left in ``folder``; returns their paths.
    Only one run writes in a folder at a time, so no temporary file there is still being written."""
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path, map_location="cpu") -> dict:
    """Loads a checkpoint written by :func:`save_checkpoint` (tensors and plain Python only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"checkpoint: {path} is not a readable hyperkd checkpoint ({err})") from err


def rng_state() -> dict:
    """Python, numpy and torch (CPU and, when in use, CUDA) generator states, as plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(_as_tuples(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate wants the nested tuples that a save/load round trip may turn into lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
