"""Mobile export: ``optimize_for_mobile`` + the lite-interpreter format (deprecated since torch 2.11).

Where the installed torch no longer provides ``_save_for_lite_interpreter``, :func:`save_mobile`
says so in a ``UserWarning`` and writes the TorchScript file instead (loadable by full LibTorch).
Where ``optimize_for_mobile`` fails (torch built without XNNPACK, as the PyPI CPU wheel of 2.13),
it warns and writes the lite file of the frozen module without the mobile passes.
For new pipelines use ``torch.export`` (:mod:`deeprebirth.export.pt2`) with ExecuTorch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from deeprebirth.export.metadata import METADATA_FILE, ExportMetadata
from deeprebirth.export.torchscript import save_torchscript, script_or_trace


def lite_interpreter_available() -> bool:
    """Whether this torch can still write lite-interpreter (``.ptl``) files."""
    try:
        from torch.utils.mobile_optimizer import optimize_for_mobile  # noqa: F401
    except ImportError:
        return False
    return hasattr(torch.jit.ScriptModule, "_save_for_lite_interpreter")


def save_mobile(
    model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, metadata: ExportMetadata
) -> Path:
    """Writes the mobile-optimized lite-interpreter file of ``model`` with the metadata as extra
    file ``deeprebirth.json``; returns the path. Falls back to :func:`save_torchscript` (with a
    warning and ``metadata.format == "torchscript"``) where the lite format is gone."""
    path = Path(path)
    if not lite_interpreter_available():
        warnings.warn(
            f"torch {torch.__version__} no longer writes the lite-interpreter format; "
            f"writing a TorchScript file to {path} instead (load it with torch::jit::load)",
            UserWarning,
            stacklevel=2,
        )
        metadata.format = "torchscript"
        return save_torchscript(model, example_input, path, metadata)
    from torch.utils.mobile_optimizer import optimize_for_mobile

    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = script_or_trace(model, example_input)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*(jit|mobile|lite).*deprecated", category=Warning
        )
        try:
            optimized = optimize_for_mobile(scripted)
        except RuntimeError as error:  # e.g. torch built without XNNPACK
            reason = (
                "built without XNNPACK"
                if "XNNPACK" in str(error)
                else str(error).strip().splitlines()[0][:160]
            )
            warnings.warn(
                f"optimize_for_mobile is unavailable on torch {torch.__version__} ({reason}); "
                "writing the lite-interpreter "
                "file of the frozen module without the mobile passes",
                UserWarning,
                stacklevel=2,
            )
            optimized = torch.jit.freeze(scripted.eval())
        optimized._save_for_lite_interpreter(
            str(path), _extra_files={METADATA_FILE: metadata.to_json()}
        )
    return path
