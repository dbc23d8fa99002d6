"""PyTorch DDP under ``torchrun``, for the training driver: the helpers live in
:mod:`hyperkd.runtime` (the hypernetwork's fused step needs them too, and ``hyper`` may not import
``train``); they are re-exported here so that ``from hyperkd.train import distributed`` keeps
working."""
from hyperkd.runtime import active, init_from_env, is_main, rank, shard, sum_across_ranks, world_size

__all__ = ["active", "init_from_env", "is_main", "rank", "shard", "sum_across_ranks", "world_size"]
