"""Builds the deeprebirth Python package and its C++ extension deeprebirth._C.

Build against the installed torch (never in an isolated environment):

    pip install --no-build-isolation -e .

The operator sources are every .cpp under csrc/ops (and every .cu under csrc/ops when the
installed torch has CUDA and nvcc is found); CMakeLists.txt compiles the same list into
libdeeprebirth_ops.so. csrc/bindings.cpp adds the pybind11 module on top.
"""

import os
import re
import sys
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"


def read_version() -> str:
    text = (ROOT / "deeprebirth" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def build_with_cuda() -> bool:
    """CUDA kernels are built when torch has CUDA and nvcc exists (override: DEEPREBIRTH_CUDA=0/1)."""
    forced = os.environ.get("DEEPREBIRTH_CUDA")
    if forced is not None:
        return forced == "1"
    import torch

    return torch.version.cuda is not None and CUDA_HOME is not None


def op_sources(with_cuda: bool) -> list[str]:
    patterns = ["ops/**/*.cpp"] + (["ops/**/*.cu"] if with_cuda else [])
    files = sorted(p for pattern in patterns for p in CSRC.glob(pattern))
    return [str(p.relative_to(ROOT)) for p in files]


def openmp_flags() -> list[str]:
    """``-fopenmp`` when torch runs its intra-op threads on OpenMP (the Linux wheels).

    at::parallel_for is a header template: compiled without OpenMP it runs its whole range on the
    calling thread. The extension then links libgomp.so.1, which resolves to the copy torch has
    already loaded, so both share one thread pool.
    """
    import torch

    uses_openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    return ["-fopenmp"] if uses_openmp and sys.platform.startswith("linux") else []


def extension():
    with_cuda = build_with_cuda()
    version = read_version()
    macros = [("DEEPREBIRTH_VERSION", f'"{version}"')]
    openmp = openmp_flags()
    cxx_flags = ["-O3", "-fvisibility=hidden", *openmp]
    extra = {"cxx": cxx_flags}
    kind = CppExtension
    if with_cuda:
        kind = CUDAExtension
        macros.append(("DEEPREBIRTH_WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
    sources = ["csrc/bindings.cpp", *op_sources(with_cuda)]
    return kind(
        name="deeprebirth._C",
        sources=sources,
        include_dirs=[str(CSRC)],
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=openmp,
    )


setup(
    version=read_version(),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
