"""Import timm (PyTorch Image Models), an optional dependency, on deeprebirth's CPU torch.

timm imports torchvision when it is imported, and PyPI's torchvision wheel does not load on a
CPU-only torch (see :mod:`deeprebirth.compat.torchvision`), so ``import timm`` fails there until
torchvision has been imported through :func:`~deeprebirth.compat.torchvision.import_torchvision`.
:func:`import_timm` does that step first. timm is never imported when deeprebirth is: only
``build_model("timm:<name>")`` and code that asks for it import it.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

INSTALL_HINT = (
    "pip install 'deeprebirth[timm]', or next to an installed torch "
    "pip install --no-deps -r requirements-timm.txt (which never replaces torch)"
)


def import_timm() -> ModuleType:
    """Returns the ``timm`` module, importing torchvision through the CPU-torch workaround first.

    Raises:
        ImportError: timm is not installed (the message says how to install it), or timm or
            torchvision fails to import.

    Example:
        >>> timm = import_timm()
        >>> timm.create_model("resnet18", num_classes=10).fc.out_features
        10
    """
    module = sys.modules.get("timm")
    if module is not None and hasattr(module, "create_model"):
        return module
    if importlib.util.find_spec("timm") is None:
        raise ImportError(
            f"timm models need the package 'timm', which is not installed: {INSTALL_HINT}"
        )
    from deeprebirth.compat.torchvision import import_torchvision

    try:
        import_torchvision()
    except ImportError as error:
        raise ImportError(f"timm needs torchvision, which failed to import: {error}") from error
    import timm

    return timm
