"""Builds flashinfer._C: CUDA + CPU kernels when torch has CUDA and nvcc is found, CPU kernels otherwise.

TORCH_CUDA_ARCH_LIST selects the GPU targets (default "8.0;9.0a"); MAX_JOBS sets the parallel compile jobs.
FLASHINFER_CPU_ONLY=1 forces a CPU-only build.
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def with_cuda() -> bool:
    if os.environ.get("FLASHINFER_CPU_ONLY", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    os.chdir(ROOT)  # sources are relative paths, so the build works from any directory
    sources = ["csrc/registration.cpp", "csrc/checks.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3"]
    if not with_cuda():
        return CppExtension("flashinfer._C", sources, extra_compile_args={"cxx": cxx})
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        "flashinfer._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        extra_compile_args={"cxx": cxx + ["-DFLASHINFER_WITH_CUDA"], "nvcc": nvcc + ["-DFLASHINFER_WITH_CUDA"]},
    )


setup(
    name="flashinfer",
    version="0.1.0",
    description="FlashInfer's LLM-serving kernels as real PyTorch operators (torch.ops.flashinfer)",
    packages=["flashinfer", "flashinfer.meta_kernels"],
    package_dir={"flashinfer": "ops", "flashinfer.meta_kernels": "meta_kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.11"],
)
