"""The package itself: import on a CPU-only machine, no CUDA initialisation, ops registered."""
import subprocess
import sys

import torch


def test_import_never_initialises_cuda():
    code = "import torch, hyperkd; import hyperkd.functional; print(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ops_are_registered_for_cpu():
    import hyperkd  # noqa: F401

    for op in ("at_summary", "at_loss", "pack_positive_mask"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hyperkd::{op}", "CPU"), op


def test_triton_kernels_are_registered_for_cuda():
    import hyperkd  # noqa: F401

    for op in ("at_summary", "at_loss"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hyperkd::{op}", "CUDA"), op
