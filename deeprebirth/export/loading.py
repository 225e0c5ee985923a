"""Loads any file written by ``deeprebirth.export`` back as a callable ``tensor -> logits``.

Example:
    >>> path = deeprebirth.export(model, x, format="onnx", out="m.onnx")  # doctest: +SKIP
    >>> run = load_exported(path)  # doctest: +SKIP
    >>> torch.testing.assert_close(run(x), model(x))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from deeprebirth.export.metadata import ExportMetadata


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    return run


def _inference(module: Callable[[torch.Tensor], torch.Tensor]):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return run


def load_exported(path: str | os.PathLike) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model in ``path`` (TorchScript, lite, ONNX or pt2, told apart by its metadata record)
    as a function of a batch ``(N, C, H, W)``; ONNX runs in ONNX Runtime on the CPU.

    Raises:
        FileNotFoundError / ValueError: as :func:`deeprebirth.export.read_metadata`.
    """
    from deeprebirth.export import read_metadata

    path = Path(path)
    record: ExportMetadata = read_metadata(path)
    if record.format == "onnx":
        return _onnx_runner(path)
    if record.format == "pt2":
        return _inference(torch.export.load(str(path)).module())
    if record.format == "mobile":
        from torch.jit.mobile import _load_for_lite_interpreter

        return _inference(_load_for_lite_interpreter(str(path)))
    return _inference(torch.jit.load(str(path), map_location="cpu"))
