"""The stand-alone programs under bench/ that docs/ quote or a device session runs: the C++ ones
(the FMA peak, the block products' rates) build with g++ against the kernels' headers and run, and
the GPU session script parses and refuses what it cannot do. Nothing asserts on the rates they
print; block_gemm_rate itself fails when its three routes' products disagree."""
import platform
import re
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TORCH_LIB = Path(torch.__file__).parent / "lib"

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the programs are x86-64 only")


def build(source: str, out: Path, *flags: str) -> Path:
    subprocess.run(["g++", "-O2", "-march=native", "-std=c++20", str(ROOT / "bench" / source), "-o",
                    str(out), *flags], check=True, capture_output=True, text=True)
    return out


def test_fma_peak_reports_one_thread_and_all_threads(tmp_path):
    program = build("fma_peak.cpp", tmp_path / "fma_peak", "-pthread")
    printed = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    rates = [float(r) for r in re.findall(r"([0-9.]+) GFLOP/s", printed)]
    assert len(rates) == 2 and all(r > 0 for r in rates), printed


@pytest.fixture(scope="module")
def block_gemm_rate(tmp_path_factory):
    return build("block_gemm_rate.cpp", tmp_path_factory.mktemp("bench") / "block_gemm_rate",
                 f"-L{TORCH_LIB}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{TORCH_LIB}")


def test_block_gemm_rate_routes_agree_at_partial_and_wide_widths(block_gemm_rate):
    # 3: one partial panel; 64: whole panels; 280: past the tiles' TLB bound, a partial last panel.
    run = subprocess.run([str(block_gemm_rate), "3", "64", "280"], capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["3", "64", "280"], run.stdout


def test_block_gemm_rate_asks_for_a_width(block_gemm_rate):
    run = subprocess.run([str(block_gemm_rate)], capture_output=True, text=True)
    assert run.returncode == 2 and "usage" in run.stderr


@pytest.mark.parametrize("stages", [[], ["build", "siren"]], ids=["none", "unknown"])
def test_gpu_session_script_refuses_before_running_anything(tmp_path, stages):
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), *stages], capture_output=True,
                         text=True, env={"OUT": str(tmp_path), "PYTHON": "false", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 2, run.stdout + run.stderr
    assert "build, test, siren-narrow, siren-wide, kd" in run.stderr
