"""Builds ``hyperkd._C`` from ``csrc/`` and maps the top-level ``kernels/`` folder to ``hyperkd.kernels``.

The C++ CPU kernels are always built. The CUDA sources join them when torch is a CUDA build and
``nvcc`` is found (``CUDA_HOME``); ``HYPERKD_NO_CUDA=1`` skips them. A machine without a GPU can still
compile the ``.cu`` files, which lets CI compile-check them.
"""
import glob
import os
import platform

from setuptools import find_packages, setup
from torch.utils import cpp_extension


def _cuda_home():
    """The first CUDA toolkit with both nvcc and the runtime headers, or None."""
    for home in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if home and all(os.path.exists(os.path.join(home, *p))
                        for p in (("bin", "nvcc"), ("include", "cuda_runtime.h"))):
            return home
    return None


def _extension():
    import torch

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # The extension is compiled where it runs (make builds it), so it may use the host's vector
    # units as torch.compile's generated code does; HYPERKD_PORTABLE=1 builds for any x86-64/arm64.
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    if os.environ.get("HYPERKD_PORTABLE", "0") != "1":
        cxx.append("-march=native")
    link = ["-fopenmp"]
    if platform.machine() == "x86_64" and platform.libc_ver()[0] == "glibc":
        link.append("-lmvec")  # glibc's SIMD exp/sin/cos for the `omp simd` loops (csrc/cpu/simd_math.h)
    want_cuda = os.environ.get("HYPERKD_NO_CUDA", "0") != "1" and torch.version.cuda is not None
    cuda_home = _cuda_home() if want_cuda else None
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        # Without a visible GPU torch cannot pick an arch: build for T4, A100 and H100.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "7.5;8.0;9.0")
        return cpp_extension.CUDAExtension(
            "hyperkd._C",
            sources + sorted(glob.glob("csrc/cuda/*.cu")),
            extra_compile_args={"cxx": cxx + ["-DHYPERKD_WITH_CUDA"], "nvcc": ["-O3", "-std=c++20"]},
            extra_link_args=link,
        )
    return cpp_extension.CppExtension(
        "hyperkd._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
    )


setup(
    packages=find_packages(include=["hyperkd", "hyperkd.*"]) + ["hyperkd.kernels"],
    package_dir={"hyperkd.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
