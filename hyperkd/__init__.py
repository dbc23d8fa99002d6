"""hyperkd: hypernetworks trained with fused layer-wise knowledge distillation.

Importing it loads the compiled ops (``hyperkd._C``) and registers their Triton CUDA kernels; it
never initialises CUDA. Subpackages: ``hyper`` (MIP hypernetworks), ``kd`` (layer-wise KD methods),
``models`` (CIFAR zoo), ``data``, ``train`` (the training driver).
"""
from hyperkd import functional, ops
from hyperkd.ops import AttentionTransferLoss

__version__ = "0.1.0"
__all__ = ["AttentionTransferLoss", "functional", "ops", "__version__"]
