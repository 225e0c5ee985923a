"""Builds the deeprebirth Python package against the torch installed in this environment.

    pip install --no-build-isolation .      # into an environment that has torch
    pip install --no-build-isolation -e .   # development install (scripts/setup.sh)

``--no-build-isolation`` matters: an isolated build environment has no torch (and would download
another one); the extension must be compiled against the torch it will run with.

Two shared libraries, each source compiled once:

- ``deeprebirth/lib/libdeeprebirth_ops.so``: the operators (every .cpp under csrc/ops, and every .cu
  when the installed torch has CUDA and nvcc is found; CMakeLists.txt builds the same library from
  the same list). They register with the dispatcher when it loads. C++ programs link it through
  ``find_package(deeprebirth)``.
- ``deeprebirth._C``: the pybind11 module of csrc/bindings.cpp. It links the library (RUNPATH
  ``$ORIGIN/lib``), so importing deeprebirth registers the operators.

The wheel also carries what lives outside deeprebirth/: ``configs/*.yaml`` as
``deeprebirth/configs`` (``deeprebirth finetune --config NAME``), the operator headers as
``deeprebirth/include/deeprebirth`` and the CMake package files as
``deeprebirth/share/cmake/deeprebirth`` (``deeprebirth.cmake_prefix_path()``).

Objects stay in build/temp.<platform>-<python>, also for editable installs (setuptools would use a
temporary folder): ninja then recompiles only changed sources, and a wheel built after an editable
install (tests/python/test_install.py) only links.
"""

import os
import re
import shutil
import sys
import sysconfig
from pathlib import Path

import setuptools
from setuptools import setup
from setuptools.command.build_py import build_py

if tuple(int(part) for part in setuptools.__version__.split(".")[:2]) < (77, 0):
    # --no-build-isolation builds with the environment's setuptools (a Python 3.11 venv bundles 65)
    sys.exit(
        f"error: deeprebirth needs setuptools >= 77 to build, this environment has "
        f"{setuptools.__version__}: pip install --upgrade 'setuptools>=77'"
    )

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as error:
    sys.exit(
        "error: deeprebirth compiles against the torch installed in the environment it is "
        f"installed into, but torch cannot be imported here ({error}).\n"
        "Install torch first, then build without build isolation (an isolated build environment "
        "has no torch and pip would download another one):\n"
        "    pip install --no-build-isolation ."
    )

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
OPS_LIBRARY = "deeprebirth.lib.deeprebirth_ops"  # built as deeprebirth/lib/libdeeprebirth_ops.so
OPS_LIBRARY_FILE = "libdeeprebirth_ops.so"
DEPENDENCIES = ["numpy", "pyyaml", "omegaconf>=2.3", "tqdm"]


def read_version() -> str:
    text = (ROOT / "deeprebirth" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def torch_requirement() -> str:
    """The torch release series the libraries are compiled against (its C++ ABI changes between
    minor releases). Building without isolation, the installed torch always satisfies it."""
    major, minor = torch.__version__.split(".")[:2]
    return f"torch=={major}.{minor}.*"


def build_with_cuda() -> bool:
    """CUDA kernels are built when torch has CUDA and nvcc exists (override: DEEPREBIRTH_CUDA=0/1)."""
    forced = os.environ.get("DEEPREBIRTH_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def op_sources(with_cuda: bool) -> list[str]:
    patterns = ["ops/**/*.cpp"] + (["ops/**/*.cu"] if with_cuda else [])
    files = sorted(p for pattern in patterns for p in CSRC.glob(pattern))
    return [str(p.relative_to(ROOT)) for p in files]


def openmp_flags() -> list[str]:
    """``-fopenmp`` when torch runs its intra-op threads on OpenMP (the Linux wheels).

    at::parallel_for is a header template: compiled without OpenMP it runs its whole range on the
    calling thread. The library then links libgomp.so.1, which resolves to the copy torch has
    already loaded, so both share one thread pool.
    """
    uses_openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    return ["-fopenmp"] if uses_openmp and sys.platform.startswith("linux") else []


def onednn_root() -> Path | None:
    """The oneDNN the packed convolutions compile their own primitives with, or None.

    csrc/ops/direct_conv/cpu/onednn_conv_primitive.h says why: torch holds a oneDNN but does not
    export its API. Looked for in DEEPREBIRTH_ONEDNN_ROOT, else where requirements.txt's
    onednn-devel-cpu-gomp wheel put include/ and lib/ (the prefix of the environment it is
    installed in, also when a virtual environment sees it through its system site packages). It
    must run on OpenMP when torch does (its libgomp.so.1 then resolves to the copy torch loaded:
    one thread pool). DEEPREBIRTH_ONEDNN=0 builds without it; =1 makes a missing one an error.
    """
    forced = os.environ.get("DEEPREBIRTH_ONEDNN")
    if forced == "0":
        return None
    root = os.environ.get("DEEPREBIRTH_ONEDNN_ROOT")
    if root is None:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            files = distribution("onednn-devel-cpu-gomp").files or []
            config = next(f for f in files if f.as_posix().endswith("oneapi/dnnl/dnnl_config.h"))
            root = Path(config.locate()).resolve().parents[3]  # <root>/include/oneapi/dnnl/
        except (PackageNotFoundError, StopIteration):
            root = sys.prefix
    root = Path(root)
    config = root / "include" / "oneapi" / "dnnl" / "dnnl_config.h"
    found = config.is_file() and (root / "lib" / "libdnnl.so").exists()
    if found and openmp_flags():
        found = (
            re.search(r"#define DNNL_CPU_RUNTIME DNNL_RUNTIME_OMP\b", config.read_text())
            is not None
        )
    if not found and forced == "1":
        sys.exit(
            f"error: DEEPREBIRTH_ONEDNN=1 but no oneDNN with an OpenMP CPU runtime under {root} "
            "(include/oneapi/dnnl/, lib/libdnnl.so): pip install onednn-devel-cpu-gomp==2023.2.0"
        )
    return root if found else None


def onednn_requirement() -> list[str]:
    """The installed oneDNN wheel the library links (its RUNPATH names its lib/), when it does."""
    if onednn_root() is None:
        return []
    from importlib.metadata import PackageNotFoundError, version

    try:
        return [f"onednn-cpu-gomp=={version('onednn-cpu-gomp')}"]
    except PackageNotFoundError:  # a oneDNN of DEEPREBIRTH_ONEDNN_ROOT, not a wheel
        return []


def ops_library():
    """libdeeprebirth_ops.so: the operators, a C++ library without Python."""
    with_cuda = build_with_cuda()
    macros = [("DEEPREBIRTH_VERSION", f'"{read_version()}"')]
    openmp = openmp_flags()
    include_dirs = [str(CSRC)]
    link = [*openmp, f"-Wl,-soname,{OPS_LIBRARY_FILE}"]
    onednn = onednn_root()
    if onednn is not None:
        macros.append(("DEEPREBIRTH_WITH_ONEDNN", None))
        # before torch's include folder, which holds the headers of torch's own oneDNN release
        include_dirs.append(str(onednn / "include"))
        lib = onednn / "lib"
        link += [f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"]
    # Default visibility: C++ programs call the functions of deeprebirth_ops.h.
    extra = {"cxx": ["-O3", *openmp]}
    kind = CppExtension
    if with_cuda:
        kind = CUDAExtension
        macros.append(("DEEPREBIRTH_WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
    library = kind(
        name=OPS_LIBRARY,
        sources=op_sources(with_cuda),
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=link,
    )
    library.libraries.remove("torch_python")  # C++ programs load it without Python
    return library


def python_module():
    """deeprebirth._C: the build facts for Python; loading it loads the operator library."""
    return CppExtension(
        name="deeprebirth._C",
        sources=["csrc/bindings.cpp", "csrc/plan/op_plan.cpp"],
        include_dirs=[str(CSRC)],
        libraries=["deeprebirth_ops"],
        extra_compile_args={"cxx": ["-O3", "-fvisibility=hidden"]},
        extra_link_args=["-Wl,-rpath,$ORIGIN/lib"],
    )


class BuildLibraries(BuildExtension):
    """torch's BuildExtension (ninja) with a persistent object folder and the operator library
    named as a C++ library (libdeeprebirth_ops.so, no Python suffix)."""

    def finalize_options(self) -> None:
        super().finalize_options()
        tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        self.build_temp = str(ROOT / "build" / f"temp.{tag}")
        # distutils adds a virtual environment's include/ folder to every command line: nothing
        # these sources include lives there, and the flag would recompile everything per venv.
        venv_include = os.path.join(sys.exec_prefix, "include")
        headers = (path for path in Path(venv_include).rglob("*") if path.is_file())
        if venv_include in self.include_dirs and next(headers, None) is None:
            self.include_dirs.remove(venv_include)

    def get_ext_filename(self, ext_name: str) -> str:
        filename = super().get_ext_filename(ext_name)
        # setuptools asks with the full name, distutils with the last part
        if ext_name in (OPS_LIBRARY, OPS_LIBRARY.rpartition(".")[2]):
            return os.path.join(os.path.dirname(filename), OPS_LIBRARY_FILE)
        return filename

    def copy_extensions_to_source(self) -> None:
        # editable installs copy the libraries next to the sources: deeprebirth/lib/ too
        (ROOT / "deeprebirth" / "lib").mkdir(exist_ok=True)
        super().copy_extensions_to_source()

    def build_extension(self, ext) -> None:
        if ext.name == "deeprebirth._C":  # built after the library, which it links
            ext.library_dirs.append(os.path.dirname(self.get_ext_fullpath(OPS_LIBRARY)))
        super().build_extension(ext)


def render_template(template: Path, values: dict[str, str]) -> str:
    """``@NAME@`` replaced as CMake's configure_file(@ONLY) does; every name must be known."""
    return re.sub(r"@(\w+)@", lambda match: values[match.group(1)], template.read_text())


def data_files_outside_package() -> dict[str, Path | str]:
    """Files of the package that live outside deeprebirth/: {path in the package: source file, or
    the text of a generated file}."""
    files: dict[str, Path | str] = {}
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        files[f"deeprebirth/configs/{config.name}"] = config
    headers = [CSRC / "deeprebirth_ops.h", *sorted((CSRC / "ops").rglob("*.h"))]
    for header in headers:
        files[f"deeprebirth/include/deeprebirth/{header.relative_to(CSRC).as_posix()}"] = header
    version = read_version()
    values = {
        "PROJECT_VERSION": version,
        "PROJECT_VERSION_MAJOR": version.split(".")[0],
        # the LibTorch these libraries are compiled against (the config's hint for find_package)
        "DEEPREBIRTH_TORCH_DIR": str(Path(torch.utils.cmake_prefix_path) / "Torch"),
    }
    for name in ("deeprebirthConfig.cmake", "deeprebirthConfigVersion.cmake"):
        text = render_template(ROOT / "cmake" / f"{name}.in", values)
        files[f"deeprebirth/share/cmake/deeprebirth/{name}"] = text
    return files


class BuildPy(build_py):
    """Also copies the package's files that live outside deeprebirth/ into the build (not for
    editable installs: deeprebirth.train.config_files reads the checkout's configs/)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for target, source in data_files_outside_package().items():
            out = Path(self.build_lib) / target
            out.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                shutil.copyfile(source, out)
            else:
                out.write_text(source)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        extra = [str(Path(self.build_lib) / target) for target in data_files_outside_package()]
        return outputs + extra


setup(
    version=read_version(),
    install_requires=[*DEPENDENCIES, torch_requirement(), *onednn_requirement()],
    ext_modules=[ops_library(), python_module()],
    cmdclass={"build_ext": BuildLibraries.with_options(use_ninja=True), "build_py": BuildPy},
)
