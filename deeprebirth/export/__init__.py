"""Export deeprebirth models for deployment: TorchScript, mobile (lite), ONNX and torch.export.

``deeprebirth.export(model, example_input, format=..., portable=..., out=..., metadata=...)``
writes one file carrying the metadata record (:class:`ExportMetadata`). The package itself is
callable, so ``deeprebirth.export`` is both this package and the function :func:`export`.

Formats:
    - ``"torchscript"``: scripted (traced where scripting fails), frozen, optimized for inference;
      ``torch.jit.load`` / LibTorch ``torch::jit::load`` (deprecated since torch 2.11).
    - ``"mobile"``: ``optimize_for_mobile`` + lite interpreter where torch still provides it,
      else TorchScript with a warning (deprecated since torch 2.11).
    - ``"onnx"``: always portable, for ONNX Runtime.
    - ``"pt2"``: ``torch.export`` program, the forward path (ExecuTorch / AOTInductor pipelines).
    - ``"executorch"``: always portable, a ``.pte`` program lowered to the XNNPACK delegate (the
      CPU kernels of Android / iOS apps) at the example input's shape; prints how much of the
      graph XNNPACK took (``require_full_delegation=True``: fails naming what it left out).
      Needs ``pip install deeprebirth[deploy]``.
    - ``"openvino"``: always portable, OpenVINO IR (``.xml`` + ``.bin``) for x86 servers; inference
      in f32 unless ``precision="bf16"`` (then a warning says how far outputs move).
      Needs ``pip install deeprebirth[deploy]``.

:func:`to_onednn_graph` is deeprebirth's fastest PyTorch path on x86 CPUs: frozen TorchScript of
the portable model run by TorchScript's oneDNN Graph fuser (``deeprebirth-run --onednn-graph`` for
a portable TorchScript file in C++, ``load_exported(..., onednn_graph=True)`` in Python).

``portable=True`` replaces every :mod:`deeprebirth.nn` module with a ``to_standard()``
(ConvPool2d, BranchConv2d, the packed convolutions) by the standard layers it returns (exact), so
the file needs no deeprebirth library to load; otherwise the deeprebirth operators stay in the
graph.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprebirth.export.loading import load_exported
from deeprebirth.export.metadata import FORMATS, METADATA_FILE, METADATA_KEY, ExportMetadata
from deeprebirth.export.onednn_graph import OneDNNGraphModule, to_onednn_graph
from deeprebirth.export.portable import make_portable, uses_deeprebirth_ops

__all__ = [
    "FORMATS",
    "METADATA_FILE",
    "METADATA_KEY",
    "ExportMetadata",
    "OneDNNGraphModule",
    "export",
    "load_exported",
    "make_portable",
    "read_metadata",
    "to_onednn_graph",
    "uses_deeprebirth_ops",
]

# Formats whose runtimes know no deeprebirth operator: the model is always made portable.
ALWAYS_PORTABLE = ("onnx", "executorch", "openvino")


def export(
    model: nn.Module,
    example_input: torch.Tensor,
    format: str = "torchscript",
    portable: bool = False,
    out: str | os.PathLike = "model.pt",
    metadata: Mapping[str, Any] | ExportMetadata | None = None,
    *,
    require_full_delegation: bool = False,
    precision: str = "f32",
) -> Path:
    """Writes ``model`` (put in eval mode) to ``out`` in ``format``; returns the path.

    Args:
        model: the network, e.g. a slimmed GoogLeNet holding ConvPool2d / BranchConv2d modules.
        example_input: ``(N, 3, H, W)``; its H, W become the metadata ``input_size`` (for
            ``"executorch"`` the program's fixed input shape).
        format: one of :data:`FORMATS` (``"torchscript"``, ``"mobile"``, ``"onnx"``, ``"pt2"``,
            ``"executorch"``, ``"openvino"``).
        portable: replace deeprebirth ops by standard layers (always done for ONNX, ExecuTorch
            and OpenVINO).
        out: output file (``"openvino"``: the ``.xml``; the weights go to the ``.bin`` beside).
        metadata: an :class:`ExportMetadata`, or a mapping of its fields (e.g. the metadata of a
            deeprebirth model file: ``source_model``, ``rules_applied``, ``class_names``,
            ``mean``, ``std``, ``resize_size``).
        require_full_delegation: ``"executorch"`` only: fail unless XNNPACK takes every operator.
        precision: ``"openvino"`` only: ``"f32"`` or ``"bf16"``, the inference precision stored
            in the IR.

    Raises:
        ValueError: unknown format, an option of another format, or bad metadata (the message
            names the field); for ``"executorch"`` with ``require_full_delegation``, the
            operators XNNPACK left out (:class:`~deeprebirth.export.executorch.DelegationError`).
        ImportError: the format's optional package is missing (the message says what to install).

    Example:
        >>> import deeprebirth
        >>> net = deeprebirth.models.bvlc_googlenet(num_classes=10, width=0.25)
        >>> deeprebirth.export(net, torch.randn(1, 3, 96, 96), format="onnx", out="/tmp/g.onnx")
        PosixPath('/tmp/g.onnx')
    """
    if format not in FORMATS:
        raise ValueError(f"expected format to be one of {FORMATS}, but got {format!r}")
    if require_full_delegation and format != "executorch":
        raise ValueError(
            f"require_full_delegation applies to format='executorch', but format is {format!r}"
        )
    if precision != "f32" and format != "openvino":
        raise ValueError(f"precision applies to format='openvino', but format is {format!r}")
    if isinstance(metadata, ExportMetadata):
        record = ExportMetadata.from_json(metadata.to_json())
        record.input_size = [int(s) for s in example_input.shape[2:]]
    else:
        record = ExportMetadata.build(example_input, metadata)
    record.format = format
    record.portable = bool(portable or format in ALWAYS_PORTABLE or not uses_deeprebirth_ops(model))
    model = make_portable(model) if portable else model
    model = model.eval()
    if format == "torchscript":
        from deeprebirth.export.torchscript import save_torchscript as save
    elif format == "mobile":
        from deeprebirth.export.mobile import save_mobile as save
    elif format == "onnx":
        from deeprebirth.export.onnx import save_onnx as save
    elif format == "executorch":
        from deeprebirth.export.executorch import save_executorch

        save = functools.partial(save_executorch, require_full_delegation=require_full_delegation)
    elif format == "openvino":
        from deeprebirth.export.openvino import save_openvino

        save = functools.partial(save_openvino, precision=precision)
    else:
        from deeprebirth.export.pt2 import save_pt2 as save
    with torch.no_grad():
        return save(model, example_input, out, record)


def read_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The metadata record of any file written by :func:`export` (format from its content).

    Raises:
        ValueError: the file carries no deeprebirth metadata or is not an exported model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model not found: {path}")
    with path.open("rb") as file:
        head = file.read(8)
    from deeprebirth.export.executorch import is_pte
    from deeprebirth.export.openvino import is_openvino_ir

    if is_pte(head):
        from deeprebirth.export.executorch import read_executorch_metadata

        return read_executorch_metadata(path)
    if is_openvino_ir(head):
        from deeprebirth.export.openvino import read_openvino_metadata

        return read_openvino_metadata(path)
    if head[:4] != b"PK\x03\x04":  # not a zip: TorchScript, lite and pt2 are zips
        from deeprebirth.export.onnx import read_onnx_metadata

        return read_onnx_metadata(path)
    import zipfile

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(f"extra/{METADATA_FILE}") or name.endswith(
                f"extra/{METADATA_FILE}.json"
            ):
                return ExportMetadata.from_json(archive.read(name))
    raise ValueError(f"{path} carries no deeprebirth metadata ({METADATA_FILE})")


class _CallableModule(types.ModuleType):
    """Makes ``deeprebirth.export(...)`` call :func:`export` while staying the package."""

    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
