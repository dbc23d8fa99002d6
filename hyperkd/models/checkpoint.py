"""Checkpoints from local files, loaded strictly, with errors that say what is wrong.

Accepted layouts: a raw ``state_dict``; a dict that wraps one under ``state_dict`` or ``model``
(what training scripts usually save); keys prefixed by ``module.`` (``DataParallel`` /
``DistributedDataParallel``). Files are read with ``weights_only=True``, so a checkpoint can never
run code while it is loaded.
"""
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from torch import nn

WRAPPER_KEYS = ("state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
MAX_LISTED_KEYS = 10


def _listing(keys: List[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    hidden = len(keys) - MAX_LISTED_KEYS
    return f"{shown}, ... and {hidden} more" if hidden > 0 else shown


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The state_dict stored in ``path``, unwrapped and without ``module.`` prefixes, on the CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling garbage raises many unrelated types
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path} is not a PyTorch checkpoint that loads with weights_only=True "
            f"({first_line}); if it holds a whole pickled model, re-save model.state_dict()"
        ) from err
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        obj = next((obj[key] for key in WRAPPER_KEYS if _is_state_dict(obj.get(key))), obj)
    if not _is_state_dict(obj):
        if isinstance(obj, Mapping):
            found = f"a dict with keys {_listing(sorted(map(str, obj)))}"
        else:
            found = f"a {type(obj).__name__}"
        raise ValueError(
            f"checkpoint {path} holds {found}, not a state_dict: expected a mapping of parameter "
            f"names to tensors, either at the top level or under one of {list(WRAPPER_KEYS)}"
        )
    return {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in obj.items()}


def mismatches(model: nn.Module, state_dict: Mapping) -> List[str]:
    """Reasons ``state_dict`` cannot load strictly: missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    for key, tensor in state_dict.items():
        if key in expected and tensor.shape != expected[key].shape:
            problems.append(f"shape mismatch for {key}: checkpoint has {tuple(tensor.shape)}, "
                            f"model has {tuple(expected[key].shape)}")
    return problems


def load_checkpoint(model: nn.Module, path: Union[str, Path],
                    model_name: Optional[str] = None) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` strictly and return the model.

    ``model_name`` names the model in errors (default: its class name).
    A model with a fused deploy form (RepVGG) is fused first when the checkpoint was saved fused.
    Raises FileNotFoundError for a missing file and ValueError for anything that does not fit.
    """
    state_dict = read_state_dict(path)
    is_fused = getattr(model, "is_fused_state_dict", None)
    if is_fused is not None and is_fused(state_dict):
        model.reparameterize()
    problems = mismatches(model, state_dict)
    if problems:
        raise ValueError(f"checkpoint {path} does not fit {model_name or type(model).__name__}: "
                         + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
    return model
