"""What a run is, so that an output folder never mixes two runs or labels one with another's flags.

A run's identity is a plain dict, keyed by flag name, of every setting that changes its results:
model, teacher, KD method and parameters, hidden widths, optimizer, lr and schedules, epochs, fused
step, dtypes, seed, data. Settings that only say where or how a run goes (device, workers, data
root, output folder, logging) are left out, so a run may resume on another machine. The
:class:`~hyperkd.train.loop.Trainer` stores the identity in ``last.pt`` and ``summary.json``.

:func:`check_out_dir` is the guard every training command runs before it writes anything: a folder
that holds a run is refused unless the command resumes it (and then its identity must match, the
first differing flag named) or overwrites it explicitly.
"""
import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Optional

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "summary.json", "diverged.json")
# Where and how a run goes, not what it computes.
NOT_IDENTITY = ("device", "workers", "data_root", "out", "resume", "overwrite", "progress", "debug",
                "grad_norm", "channels_last")
# Settings a run without KD never reads: a No-KD baseline stays valid when only these change.
KD_ONLY = ("teacher", "teacher_model", "schedule", "kd_weight", "lambda0", "ft_epochs", "tap", "pairs", "adapter")


def plain(value):
    """``value`` as JSON data (paths and dtypes as strings, tuples as lists), so that an identity
    compares equal after a round trip through ``summary.json`` or ``last.pt``."""
    return json.loads(json.dumps(value, default=str))


def student_identity(cfg) -> dict:
    """The identity of a student run from its config dataclass (every field but :data:`NOT_IDENTITY`;
    without KD, not :data:`KD_ONLY` either). The teacher checkpoint is named by its absolute path."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IDENTITY}
    if isinstance(values.get("kd"), (list, tuple)) and len(values["kd"]) == 1:
        values["kd"] = values["kd"][0]  # `--kd at0` and kd="at0" are one run
    if values.get("kd") in ("none", None, [], ()):
        values = {k: v for k, v in values.items() if k not in KD_ONLY}
    elif values.get("teacher") is not None:
        values["teacher"] = str(Path(values["teacher"]).resolve())
    return {"run": "student", **plain(values)}


def teacher_identity(**settings) -> dict:
    """The identity of a teacher run: its settings by flag name (``data``, ``lr``, ...)."""
    return {"run": "teacher", **plain(settings)}


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _shown(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "(not set)" if value is None else str(value)


_ABSENT = object()


def check_same_run(stored: Optional[dict], current: dict, where: Path, *, remedy: str,
                   ignore: Iterable[str] = ()) -> None:
    """Raises ValueError naming the first flag whose value differs between the run stored in
    ``where`` and ``current`` (keys in ``ignore`` may differ)."""
    if stored is None:
        raise ValueError(f"--out: {where} holds a run without a stored identity, so it cannot be "
                         f"checked against these flags; {remedy}")
    if stored.get("run") != current.get("run"):
        raise ValueError(f"--out: {where} holds a {stored.get('run')} run, not a {current.get('run')} run; "
                         f"{remedy}")
    # Settings both runs have first: a run without KD has no teacher, but --kd is what differs.
    shared = [k for k in current if k in stored]
    keys = shared + [k for k in current if k not in stored] + [k for k in stored if k not in current]
    for key in keys:
        old, new = stored.get(key, _ABSENT), current.get(key, _ABSENT)
        if key in ignore or old == new:
            continue
        old = "(unused)" if old is _ABSENT else _shown(old)
        new = "(unused)" if new is _ABSENT else _shown(new)
        raise ValueError(f"{flag(key)}: the run in {where} was trained with {flag(key)} {old}, "
                         f"this command gives {new}; {remedy}")


def stored_identity(folder: Path, source: str) -> Optional[dict]:
    """The identity in ``folder/source`` (``summary.json``, ``diverged.json`` or ``last.pt``), None
    when it has none. ``last.pt`` is memory-mapped, so a large checkpoint's weights are not read."""
    path = Path(folder) / source
    if path.suffix == ".json":
        return json.loads(path.read_text()).get("identity")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("identity")
    except Exception as err:  # torch raises several types for a file that is not a checkpoint
        raise ValueError(f"--resume: {path} is not a readable hyperkd checkpoint ({err})") from err


def holds_run(folder: Path) -> bool:
    return any((Path(folder) / name).exists() for name in RUN_FILES)


def check_out_dir(out: Path, identity: Optional[dict] = None, *, resume: bool = False,
                  overwrite: bool = False, can_overwrite: bool = True) -> None:
    """Raises ValueError, before anything is written, when ``out`` cannot take this run: it is a
    file or not writable; it holds a run and neither ``resume`` nor ``overwrite`` is set; or
    ``resume`` finds a ``last.pt`` whose identity differs from ``identity`` (other than in
    ``epochs``: a resume may extend a run). ``can_overwrite``: whether the message may suggest
    ``--overwrite`` (a command without that flag says False)."""
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--overwrite: excludes --resume (one starts the run in --out afresh, the "
                         "other continues it)")
    _check_writable(out)
    if overwrite or not holds_run(out):
        return
    if not resume:
        state = "a finished run" if (out / "summary.json").exists() else "an unfinished run"
        afresh = "start it afresh with --overwrite, " if can_overwrite else ""
        raise ValueError(f"--out: {out} already holds {state}; continue it with --resume, {afresh}"
                         f"or choose another --out")
    if identity is not None and (out / "last.pt").exists():
        stored = stored_identity(out, "last.pt")
        check_same_run(stored, identity, out, ignore=("epochs",),
                       remedy="resume only with the run's own flags (--epochs may grow), or choose "
                              "another --out")
        if identity.get("epochs", 0) < stored.get("epochs", 0):
            raise ValueError(f"--epochs: the run in {out} is planned for {stored['epochs']} epochs; a resume "
                             f"may extend it, not shorten it (got {identity['epochs']})")


def _check_writable(out: Path) -> None:
    """Refuses an ``out`` that is a file, or whose nearest existing folder cannot be written."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file; expected a folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--out: cannot create {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out: cannot create or write {out}: {existing} is not writable")


def start_afresh(out: Path) -> None:
    """Removes the run files in ``out`` (``--overwrite``): the new run's log starts empty."""
    for name in RUN_FILES:
        (Path(out) / name).unlink(missing_ok=True)
