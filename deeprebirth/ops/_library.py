"""Loads the compiled operator library and reports how it was built."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

_BUILD_HINT = (
    "deeprebirth's C++ extension (deeprebirth._C) is not built or does not load. "
    "Run scripts/setup.sh, or `pip install --no-build-isolation -e .` in the repository."
)


def load_extension() -> ModuleType:
    """Imports ``deeprebirth._C``, which registers the ``torch.ops.deeprebirth`` operators.

    Raises:
        ImportError: the extension is missing or was built against another torch; the message
            says how to build it.
    """
    try:
        return importlib.import_module("deeprebirth._C")
    except ImportError as error:
        raise ImportError(f"{_BUILD_HINT} ({error})") from error


def build_info() -> dict[str, Any]:
    """How the operator library was built and how it runs now.

    Returns:
        A dict with ``version``, ``torch_version`` (headers compiled against),
        ``torch_runtime_version``, ``with_cuda`` (CUDA kernels compiled in), ``cuda_available``,
        ``parallel_backend`` (ATen's intra-op backend), ``parallel_kernels`` (whether the
        kernels' ``at::parallel_for`` loops run on that backend's threads: False when the library
        was compiled without it, e.g. without ``-fopenmp``), ``num_threads`` and ``onednn``:
        the oneDNN release that packed convolutions (``pack_conv``) run as primitives of their
        own, or ``""`` when the library was built without one and they go through ATen's oneDNN
        path, which rebuilds each layer's primitive on every call. The environment variable
        ``DEEPREBIRTH_ONEDNN_PRIMITIVES=0`` sends the layers packed while it is set to ATen's
        path too.

    Example:
        >>> info = build_info()
        >>> sorted(info)[:2]
        ['cuda_available', 'num_threads']
    """
    info = dict(load_extension().build_info())
    info["torch_runtime_version"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    info["num_threads"] = torch.get_num_threads()
    return info
