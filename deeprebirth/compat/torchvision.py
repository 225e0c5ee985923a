"""Import torchvision on a CPU-only torch whose torchvision wheel carries CUDA-only C++ ops.

PyPI's torchvision wheels are CUDA builds. Their ``_C.so`` links ``libtorch_cuda.so``, so on a
CPU-only torch of the same release the library does not load, and ``import torchvision`` then
fails with ``operator torchvision::nms does not exist`` (its fake registrations assume the
library loaded). No torchvision source release is published on PyPI to build a CPU ``_C`` from.

:func:`import_torchvision` imports torchvision normally; only when that fails for this reason it
defines the two missing operator *schemas* (no kernels) and imports again. Everything deeprebirth
uses from torchvision (the model definitions, ``transforms``, ``datasets.ImageFolder``) is pure
Python and works; torchvision's own C++ operators (``torchvision.ops.nms``, ``roi_align`` …)
stay unavailable and raise torchvision's usual "Couldn't load custom C++ ops" error.
"""

from __future__ import annotations

import sys
import warnings
from types import ModuleType

import torch

_MISSING_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_shim_library: torch.library.Library | None = None


def _purge_partial_import() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def _define_missing_schemas() -> None:
    global _shim_library
    if _shim_library is None:
        _shim_library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _MISSING_SCHEMAS:
            _shim_library.define(schema)


def import_torchvision() -> ModuleType:
    """Returns the ``torchvision`` module, working around CUDA-only wheels on a CPU torch.

    Raises:
        ImportError: torchvision is not installed, or fails to import for another reason.

    Example:
        >>> tv = import_torchvision()
        >>> tv.models.resnet18().fc.out_features
        1000
    """
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "models"):
        return sys.modules["torchvision"]
    try:
        import torchvision

        return torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error) or "does not exist" not in str(error):
            raise ImportError(f"torchvision failed to import: {error}") from error
    _purge_partial_import()
    _define_missing_schemas()
    import torchvision

    warnings.warn(
        "torchvision's C++ operators could not be loaded on this torch build (CUDA-only wheel on a "
        "CPU torch); its models, transforms and datasets work, torchvision.ops kernels do not.",
        RuntimeWarning,
        stacklevel=2,
    )
    return torchvision
