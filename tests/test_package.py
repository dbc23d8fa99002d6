"""The package itself: import on a CPU-only machine, no CUDA initialisation, ops registered."""
import subprocess
import sys

import pytest
import torch


def test_import_never_initialises_cuda():
    code = "import torch, hyperkd; import hyperkd.functional; print(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ops_are_registered_for_cpu():
    import hyperkd.ops  # noqa: F401

    for op in ("at_summary", "at_loss", "pack_positive_mask"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hyperkd::{op}", "CPU"), op


def test_triton_kernels_are_registered_for_cuda():
    import hyperkd.ops  # noqa: F401

    for op in ("at_summary", "at_loss"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hyperkd::{op}", "CUDA"), op


def _modules_after(code: str) -> set:
    """The modules a fresh interpreter has imported after running ``code``."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_command_help_imports_no_torch():
    code = "import hyperkd.cli\ntry:\n    hyperkd.cli.main(['--help'])\nexcept SystemExit:\n    pass"
    assert "torch" not in _modules_after(code)


def test_import_hyperkd_loads_the_api_on_first_use():
    assert "torch" not in _modules_after("import hyperkd")
    loaded = _modules_after("import hyperkd, torch\nassert hyperkd.AttentionTransferLoss is hyperkd.ops.AttentionTransferLoss"
                            "\nassert torch._C._dispatch_has_kernel_for_dispatch_key('hyperkd::at_loss', 'CPU')"
                            "\nassert callable(hyperkd.functional.attention_transfer_loss)")
    assert {"hyperkd.ops", "hyperkd.functional"} <= loaded


def test_import_hyperkd_names_a_missing_attribute():
    import hyperkd

    with pytest.raises(AttributeError, match="no_such_name"):
        hyperkd.no_such_name
