"""TorchScript export: scripted (traced where scripting fails), frozen, optimized for inference.

TorchScript is deprecated since torch 2.11 (``torch.jit.script`` warns); it stays here because
LibTorch's ``torch::jit::load`` (the C++ runner) reads it. The forward path is ``torch.export``
(:mod:`deeprebirth.export.pt2`).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from deeprebirth.export.metadata import METADATA_FILE, ExportMetadata


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else "no message"


def script_or_trace(model: nn.Module, example_input: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)``, or
    ``torch.jit.trace(model, example_input)`` when scripting fails (Python constructs TorchScript cannot compile); TorchScript's deprecation warnings
    and its note on torch.fx.GraphModule's attribute annotations are silenced here, the fallback is
    reported as a ``UserWarning``."""
    model = model.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=Warning)
        # torch.fx.GraphModule's __init__ (a flattened model) annotates empty attributes, which
        # TorchScript reports on every scripting; nothing a caller can act on.
        warnings.filterwarnings(
            "ignore", message=r".*instance-level annotations on empty non-base types"
        )
        try:
            return torch.jit.script(model)
        except Exception as error:  # TorchScript compile errors have no common type
            warnings.warn(
                f"torch.jit.script failed ({type(error).__name__}: {_first_line(error)}); "
                "tracing instead (control flow is fixed to the example input's path)",
                UserWarning,
                stacklevel=2,
            )
            with torch.no_grad():
                return torch.jit.trace(model, example_input, check_trace=False)


def is_serializable(module: torch.jit.ScriptModule) -> bool:
    """Whether ``module`` survives ``torch.jit.save`` + ``torch.jit.load`` (in memory)."""
    buffer = io.BytesIO()
    try:
        torch.jit.save(module, buffer)
        buffer.seek(0)
        torch.jit.load(buffer)
    except RuntimeError:
        return False
    return True


def to_torchscript(model: nn.Module, example_input: torch.Tensor) -> torch.jit.ScriptModule:
    """The frozen, inference-optimized TorchScript module of ``model`` (eval mode).

    ``torch.jit.optimize_for_inference`` is applied when its result can be saved. On MKLDNN
    builds of torch (the PyPI CPU wheels) it embeds ``prim::ConstantMKLDNNTensor`` nodes that
    ``torch.jit.load`` cannot read back, so the frozen module (``torch.jit.freeze`` already runs
    the portable frozen-graph optimizations: conv/BN folding, dropout removal …) is returned
    instead; ``deeprebirth-run`` applies ``torch::jit::optimize_for_inference`` after loading.

    Example:
        >>> ts = to_torchscript(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8))
        >>> ts(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 4, 6, 6])
    """
    scripted = script_or_trace(model, example_input)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=Warning)
        frozen = torch.jit.freeze(scripted.eval())
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(scripted.eval()))
        return optimized if is_serializable(optimized) else frozen


def save_torchscript(
    model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, metadata: ExportMetadata
) -> Path:
    """Writes :func:`to_torchscript` of ``model`` to ``path`` with the metadata as extra file
    ``deeprebirth.json``; returns the path. Load with ``torch.jit.load`` (Python, after
    ``import deeprebirth`` unless portable) or ``torch::jit::load`` (C++, link deeprebirth_ops)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = to_torchscript(model, example_input)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=Warning)
        torch.jit.save(module, str(path), _extra_files={METADATA_FILE: metadata.to_json()})
    return path


def read_torchscript_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The metadata record of a TorchScript file written by :func:`save_torchscript`."""
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=Warning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return ExportMetadata.from_json(extra[METADATA_FILE])
