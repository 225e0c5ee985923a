"""Imports of the optional deployment runtimes, with a message that says what to install."""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType

DEPLOY_EXTRA = "pip install deeprebirth[deploy]"


def import_optional(module: str, package: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, whose top-level package comes from ``package``.

    Raises:
        ImportError: the package is missing (or fails to import); the message names the package,
            the pin file and the ``deploy`` extra.

    Example:
        >>> import_optional("openvino", "openvino", "OpenVINO export").__name__  # doctest: +SKIP
        'openvino'
    """
    top = module.partition(".")[0]
    try:
        importlib.import_module(top)  # first: a submodule already imported would hide its absence
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the {package!r} package ({error}): {DEPLOY_EXTRA}, or "
            "pip install --no-deps -r requirements-deploy.txt next to an installed torch"
        ) from error


@contextlib.contextmanager
def quiet_import_logs() -> Iterator[None]:
    """Silences what importing ExecuTorch reports that no user can act on: torchao's CUDA
    libraries that cannot load on a CPU-only torch, torch's note on torchao registering an Enum,
    and the runtime's "This API is experimental" warning."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This API is experimental")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
