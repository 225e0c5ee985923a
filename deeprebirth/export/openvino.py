"""OpenVINO export (IR ``.xml`` + ``.bin``) for x86 servers, run by OpenVINO's CPU plugin.

The model is made portable, exported with ``torch.export`` (dynamic batch, fixed image size; any
``torch.ops.deeprebirth`` call left is decomposed into standard operators) and converted by
``openvino.convert_model``; weights stay float32 (``compress_to_fp16=False``). The IR's
``rt_info`` holds the metadata record (``deeprebirth/metadata``) and the inference precision
(``deeprebirth/inference_precision``), which :func:`openvino_runner` compiles with.

Precision: OpenVINO's CPU plugin computes in bf16 by default on CPUs with AVX512-BF16 or AMX,
which moves logits by percents. The export asks for ``f32`` unless ``precision="bf16"``; then it
compiles both on the example input and warns how far bf16 moves the outputs. Who compiles the IR
without :func:`openvino_runner` passes ``{"INFERENCE_PRECISION_HINT": "f32"}`` themselves (the
plugin reads no precision from the file). Needs ``pip install deeprebirth[deploy]``.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deeprebirth.export._optional import import_optional
from deeprebirth.export.concat import distribute_concatenations
from deeprebirth.export.metadata import ExportMetadata
from deeprebirth.export.portable import decompose_deeprebirth_ops, make_portable
from deeprebirth.export.pt2 import dynamic_batch, export_program

PRECISIONS = ("f32", "bf16")
RT_INFO = "deeprebirth"  # rt_info section: metadata, inference_precision
PURPOSE = "OpenVINO export (format='openvino')"


def _openvino(purpose: str = PURPOSE) -> Any:
    return import_optional("openvino", "openvino", purpose)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"expected precision to be one of {PRECISIONS}, but got {precision!r}")


def to_openvino(model: nn.Module, example_input: torch.Tensor) -> Any:
    """The ``openvino.Model`` of the portable ``model``: input ``(batch, C, H, W)`` with the
    batch dynamic and ``C, H, W`` those of ``example_input``.

    Raises:
        ImportError: openvino is not installed.
    """
    ov = _openvino()
    program = decompose_deeprebirth_ops(export_program(make_portable(model), example_input))
    program = distribute_concatenations(program, dynamic_shapes=dynamic_batch())
    shape = ov.PartialShape([-1, *(int(s) for s in example_input.shape[1:])])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch's pytree LeafSpec note
        return ov.convert_model(program, input=[shape])


def compile_openvino(
    ov_model: Any, precision: str = "f32", num_threads: int | None = None, **properties: Any
) -> Any:
    """``openvino.Core().compile_model`` on the CPU with ``INFERENCE_PRECISION_HINT`` set to
    ``precision`` (and ``INFERENCE_NUM_THREADS`` when given); ``properties`` are further CPU
    properties (e.g. ``PERF_COUNT=True`` for per-layer counters)."""
    _check_precision(precision)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, **properties}
    if num_threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(num_threads)
    return _openvino().Core().compile_model(ov_model, "CPU", config)


def compiled_forward(compiled: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A compiled OpenVINO model (:func:`compile_openvino`) as a function of a batch tensor.

    The call shares memory with OpenVINO both ways (``share_inputs`` / ``share_outputs``, its
    documented zero-copy mode): OpenVINO reads the batch in place during the synchronous call,
    and only the output is copied out, because the next call overwrites OpenVINO's buffer. What
    the copying call cost: docs/benchmarks.md, "Measurement traps".
    """
    output = compiled.output(0)

    def run(x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().cpu().contiguous().numpy()
        result = compiled(batch, share_inputs=True, share_outputs=True)
        return torch.from_numpy(np.array(result[output]))

    return run


def bf16_deviation(ov_model: Any, example_input: torch.Tensor, expected: torch.Tensor) -> str:
    """How far bf16 inference moves ``ov_model``'s outputs from ``expected`` (the eager outputs
    on ``example_input``), next to f32's, as one sentence."""
    core = _openvino().Core()

    def relative(precision: str) -> float:
        out = compiled_forward(compile_openvino(ov_model, precision))(example_input)
        return float((out - expected).abs().max() / expected.abs().max().clamp_min(1e-30))

    note = ""
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        note = (
            " (this CPU has no bf16 support, so OpenVINO ran f32 here; on one with it, expect more)"
        )
    return (
        f"OpenVINO bf16 inference moves the outputs by {relative('bf16'):.2g} of the largest "
        f"output on the example input, f32 by {relative('f32'):.2g}{note}"
    )


def save_openvino(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    metadata: ExportMetadata,
    precision: str = "f32",
) -> Path:
    """Writes the OpenVINO IR of ``model`` to ``path`` (``.xml``; the weights go to the ``.bin``
    of the same name) with the metadata and ``precision`` in its ``rt_info``; returns the path.
    With ``precision="bf16"`` it warns how far bf16 moves the outputs on ``example_input``.

    Raises:
        ValueError: ``path`` does not end in ``.xml``, or an unknown ``precision``.
        ImportError: openvino is not installed.
    """
    path = Path(path)
    _check_precision(precision)
    if path.suffix != ".xml":
        raise ValueError(f"expected out to end in .xml (OpenVINO IR), but got {str(path)!r}")
    ov = _openvino()
    metadata.portable = True
    ov_model = to_openvino(model, example_input)
    if precision == "bf16":
        with torch.no_grad():
            expected = model.eval()(example_input)
        warnings.warn(bf16_deviation(ov_model, example_input, expected), UserWarning, stacklevel=2)
    ov_model.set_rt_info(metadata.to_json(), [RT_INFO, "metadata"])
    ov_model.set_rt_info(precision, [RT_INFO, "inference_precision"])
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def is_openvino_ir(head: bytes) -> bool:
    """Whether a file starting with ``head`` is XML (an OpenVINO IR ``.xml``)."""
    return head.lstrip().startswith((b"<?xml", b"<net"))


def _rt_info(path: str | os.PathLike, key: str) -> str:
    data = Path(path).read_bytes()
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:  # IR files have none; entities can blow up
        raise ValueError(f"{path}: an OpenVINO IR has no DOCTYPE or ENTITY declarations")
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as error:
        raise ValueError(f"{path} is not a readable OpenVINO IR ({error})") from error
    entry = root.find(f"rt_info/{RT_INFO}/{key}")
    if entry is None or entry.get("value") is None:
        raise ValueError(f"{path} has no rt_info {RT_INFO}/{key} (not written by deeprebirth)")
    return entry.get("value")


def read_openvino_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The metadata record of an IR written by :func:`save_openvino` (read as XML: no openvino
    needed).

    Raises:
        ValueError: not an IR, or one without deeprebirth metadata.
    """
    return ExportMetadata.from_json(_rt_info(path, "metadata"))


def openvino_runner(
    path: str | os.PathLike, num_threads: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The IR compiled for the CPU at the precision stored at export (f32 unless bf16 was asked
    for), as a function of a batch ``(N, C, H, W)``.

    Raises:
        ImportError: openvino is not installed.
    """
    ov = _openvino("Running an OpenVINO IR")
    precision = _rt_info(path, "inference_precision")
    return compiled_forward(
        compile_openvino(ov.Core().read_model(str(path)), precision, num_threads)
    )
