"""Per-epoch metrics as JSON lines, flushed as they are written and cut back on resume, so a
resumed run's log reads exactly like an uninterrupted one."""
import json
import math
import os
from pathlib import Path


class MetricsLog:
    """Appends one JSON object per epoch to ``path``; ``resume_after(epoch)`` drops later lines."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, default=_plain)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list:
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def resume_after(self, epoch: int) -> None:
        """Keeps the records of epochs ≤ ``epoch``: those a checkpoint of that epoch covers."""
        kept = [r for r in self.records() if r.get("epoch", math.inf) <= epoch]
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)


def _plain(value):
    """Tensors and numpy scalars as plain numbers or lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"metrics: cannot write a {type(value).__name__} as JSON")
