"""Per-epoch metrics as JSON lines, flushed as they are written and cut back on resume, so a
resumed run's log reads exactly like an uninterrupted one. Each line is appended after its
epoch's checkpoint is saved, so a line never describes an epoch that a resume would train again."""
import json
import math
import os
from pathlib import Path
from typing import Optional


class MetricsLog:
    """Appends one JSON object per epoch to ``path``; ``resume_after(epoch)`` drops later lines."""

    def __init__(self, path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, default=_plain)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def resume_after(self, epoch: int, record: Optional[dict] = None) -> None:
        """Keeps the records of epochs ≤ ``epoch``: those a checkpoint of that epoch covers
        (none for ``epoch`` −1). The checkpoint is saved before its epoch's line is appended, so a
        kill between the two leaves that line out: ``record``, the checkpoint's copy, restores it."""
        kept = [r for r in self.records() if r.get("epoch", math.inf) <= epoch]
        if record is not None and not any(r.get("epoch") == epoch for r in kept):
            kept.append(json.loads(json.dumps(record, default=_plain)))
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)


def _plain(value):
    """Tensors and numpy scalars as plain numbers or lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"metrics: cannot write a {type(value).__name__} as JSON")
