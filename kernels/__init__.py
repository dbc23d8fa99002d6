"""Triton kernels, one module per op family, installed as ``hyperkd.kernels``. Each exposes plain
launch functions that take and return tensors; autograd lives in ``hyperkd.ops``."""
