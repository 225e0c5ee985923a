"""ONNX export (always portable): for ONNX Runtime and other stock runtimes.

deeprebirth's fused modules are replaced by their standard equivalents first
(:func:`~deeprebirth.export.portable.make_portable`), and channel concatenations are
distributed over their readers where that moves less memory
(:func:`~deeprebirth.export.concat.distribute_concatenations`); the metadata record is stored as
``model.metadata_props["deeprebirth"]``. Needs the ``onnx`` and ``onnxscript`` packages.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from deeprebirth.export.concat import distribute_concatenations
from deeprebirth.export.metadata import METADATA_KEY, ExportMetadata
from deeprebirth.export.portable import make_portable
from deeprebirth.export.pt2 import dynamic_batch, export_program

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def save_onnx(
    model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, metadata: ExportMetadata
) -> Path:
    """Writes the portable ONNX graph of ``model`` (input ``"input"`` with a dynamic batch,
    output ``"logits"``) with the metadata in ``metadata_props``; returns the path.

    Raises:
        ImportError: ``onnx`` / ``onnxscript`` are not installed (the message says what to install).
    """
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs `pip install --no-deps onnx onnxscript onnx_ir` (see requirements.txt)"
        ) from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata.portable = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        exported = distribute_concatenations(
            export_program(make_portable(model), example_input), dynamic_shapes=dynamic_batch()
        )
        program = torch.onnx.export(
            exported,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    onnx.save_model(proto, str(path))
    return path


def read_onnx_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The metadata record of an ONNX file written by :func:`save_onnx`."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return ExportMetadata.from_json(entry.value)
    raise ValueError(f"{path} has no {METADATA_KEY!r} metadata (not written by deeprebirth)")
