"""Test set-up shared by every suite.

Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1``; the variable must be set before any
module defining ``@triton.jit`` kernels is imported, hence at the top of this file.
"""
import os
import shutil

if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import hyperkd.ops  # noqa: E402,F401  (registers torch.ops.hyperkd.*: `import hyperkd` alone is lazy)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_interpreter_collected = 0
_interpreter_passed = 0


def _interpreter_test_skipped_here(item) -> bool:
    """Interpreter tests skip on a GPU host, except those taking ``triton_device``: they run
    their kernels on the GPU there."""
    return "interpret" in item.keywords and not INTERPRET and "triton_device" not in item.fixturenames


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_interp = pytest.mark.skip(reason="TRITON_INTERPRET is not set (a GPU is present)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if _interpreter_test_skipped_here(item):
            item.add_marker(skip_interp)


def pytest_collection_finish(session):
    """Counts the interpreter tests meant to run here, after -k/-m selection, for the summary
    line CI reads."""
    global _interpreter_collected
    _interpreter_collected = sum("interpret" in item.keywords and not _interpreter_test_skipped_here(item)
                                 for item in session.items)


def pytest_runtest_logreport(report):
    global _interpreter_passed
    if report.when == "call" and report.passed and "interpret" in report.keywords:
        _interpreter_passed += 1


def pytest_terminal_summary(terminalreporter):
    # .ci/run requires every collected interpreter test to pass: a skip is as red as a failure.
    terminalreporter.write_line(f"hyperkd: {_interpreter_passed} of {_interpreter_collected} "
                                "interpreter tests passed")


@pytest.fixture
def triton_device():
    """Where Triton kernels run: on CPU tensors under the interpreter, else on the GPU."""
    return torch.device("cpu" if INTERPRET else "cuda")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
