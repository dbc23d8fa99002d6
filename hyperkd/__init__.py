"""hyperkd: hypernetworks trained with fused layer-wise knowledge distillation.

Importing it loads the compiled ops (``hyperkd._C``) and registers their Triton CUDA kernels; it
never initialises CUDA.
"""
from hyperkd import functional, ops
from hyperkd.ops import AttentionTransferLoss

__version__ = "0.1.0"
__all__ = ["AttentionTransferLoss", "functional", "ops", "__version__"]
