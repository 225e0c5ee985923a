"""Builds the deeprebirth Python package and its C++ extension deeprebirth._C.

Build against the installed torch (never in an isolated environment):

    pip install --no-build-isolation -e .

The operator sources are every .cpp under csrc/ops (and every .cu under csrc/ops when the
installed torch has CUDA and nvcc is found); CMakeLists.txt compiles the same list into
libdeeprebirth_ops.so. csrc/bindings.cpp adds the pybind11 module on top.
"""

import os
import re
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


def extension():
    with_cuda = build_with_cuda()
    version = read_version()
    macros = [("DEEPREBIRTH_VERSION", f'"{version}"')]
    cxx_flags = ["-O3", "-fvisibility=hidden"]
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
    )


setup(
    version=read_version(),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
