"""CIFAR model zoo whose module trees and state_dicts match the pytorch-cifar-models hub.

``create("resnet56", num_classes=100, checkpoint="cifar100_resnet56.pt")`` builds a network and,
optionally, loads a checkpoint from a local file strictly (see ``hyperkd.models.checkpoint`` for
the accepted layouts). ``available()`` lists the names: the hub's (``HUB``), then ``EXTRAS``,
small networks of this project for CPU demos and tests, and the GTN supernet's NAS students
(``s_nas_s``, ``s_nas_s_small``, ...); ``nas_<preset>:<op>-...`` names any path of the supernet
(``hyperkd.models.nas``).
"""
import difflib
from functools import partial
from pathlib import Path
from typing import Optional, Tuple, Union

from torch import nn

from hyperkd.models import mobilenetv2, nas, repvgg, resnet, resnet_wide, shufflenetv2, vgg
from hyperkd.models.checkpoint import load_checkpoint, read_state_dict

__all__ = ["EXTRAS", "HUB", "available", "create", "load_checkpoint", "parameter_count", "read_state_dict"]

_BUILDERS = {
    **resnet.MODELS,
    **vgg.MODELS,
    **mobilenetv2.MODELS,
    **shufflenetv2.MODELS,
    **repvgg.MODELS,
}
HUB = tuple(_BUILDERS)
_BUILDERS.update(vgg.EXTRA_MODELS)
_BUILDERS.update(resnet_wide.MODELS)
_BUILDERS.update(nas.named_students())
EXTRAS = tuple(vgg.EXTRA_MODELS) + tuple(resnet_wide.MODELS) + tuple(nas.named_students())


def available() -> Tuple[str, ...]:
    """Names accepted by ``create``: the hub's, family by family in the order of its table, then
    the extras."""
    return tuple(_BUILDERS)


def _builder(name: str):
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {type(name).__name__}")
    if nas.is_nas_name(name):  # any path of the GTN supernet: nas_<preset>:<op>-...-<op>
        return partial(nas.build_named, name)
    builder = _BUILDERS.get(name.lower())
    if builder is None:
        close = difflib.get_close_matches(name.lower(), _BUILDERS, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else \
            f"available: {', '.join(_BUILDERS)}"
        raise ValueError(f"unknown model {name!r}; {hint}")
    return builder


def create(name: str, num_classes: int = 100,
           checkpoint: Optional[Union[str, Path]] = None) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs; load ``checkpoint`` strictly if given."""
    builder = _builder(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    model = builder(num_classes=num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, model_name=name)
    return model


def parameter_count(model: nn.Module) -> int:
    """Number of learnable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())
