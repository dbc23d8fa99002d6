"""The slim training driver's building blocks: atomic checkpoints with exact resume, metrics."""
from hyperkd.train.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from hyperkd.train.metrics import MetricsLog

__all__ = ["MetricsLog", "load_checkpoint", "restore_rng_state", "rng_state", "save_checkpoint"]
