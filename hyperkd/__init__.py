"""hyperkd: hypernetworks trained with fused layer-wise knowledge distillation.

The public API (``hyperkd.ops``, ``hyperkd.functional``, ``hyperkd.AttentionTransferLoss``) loads
on first use: importing ``hyperkd.ops`` (or touching one of these names) loads the compiled ops
(``hyperkd._C``) and registers their Triton CUDA kernels, and never initialises CUDA. ``import
hyperkd`` alone imports no torch, so the ``hyperkd`` command's ``--help`` answers at once.
Subpackages: ``hyper`` (MIP hypernetworks), ``kd`` (layer-wise KD methods), ``models`` (CIFAR zoo),
``data``, ``train`` (the training driver).
"""
import importlib

__version__ = "0.1.0"
__all__ = ["AttentionTransferLoss", "functional", "ops", "__version__"]
# name -> (module, attribute of it or None for the module itself)
_LAZY = {"functional": ("hyperkd.functional", None), "ops": ("hyperkd.ops", None),
         "AttentionTransferLoss": ("hyperkd.ops", "AttentionTransferLoss")}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'hyperkd' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)


def __dir__():
    return sorted(set(globals()) | set(__all__))
