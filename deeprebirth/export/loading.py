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


def _onnx_runner(path: Path, num_threads: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])

    return run


def _inference(module: Callable[[torch.Tensor], torch.Tensor]):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return run


def load_exported(
    path: str | os.PathLike, num_threads: int | None = None, onednn_graph: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model in ``path`` (any format of :func:`deeprebirth.export.export`, told apart by its
    metadata record) as a function of a batch ``(N, C, H, W)``, on the CPU: ONNX in ONNX Runtime,
    ``.pte`` in the ExecuTorch runtime (XNNPACK), an OpenVINO IR in OpenVINO (at the precision
    stored at export, f32 by default), TorchScript / lite / pt2 in torch.

    Args:
        path: the exported file.
        num_threads: threads to run on (default: the runtime's own). For ExecuTorch and the torch
            formats this sets the process-wide pool (``torch.set_num_threads``).
        onednn_graph: TorchScript only: run it with TorchScript's oneDNN Graph fuser
            (:class:`~deeprebirth.export.onednn_graph.OneDNNGraphModule`), as
            ``deeprebirth-run --onednn-graph`` does; the file must be portable.

    Raises:
        FileNotFoundError / ValueError: as :func:`deeprebirth.export.read_metadata`,
            ``num_threads`` < 1, or ``onednn_graph`` for a file that is not portable TorchScript.
        ImportError: the format's runtime is not installed (the message says what to install).
    """
    from deeprebirth.export import read_metadata

    if num_threads is not None and num_threads < 1:
        raise ValueError(f"expected num_threads >= 1, but got {num_threads}")
    path = Path(path)
    record: ExportMetadata = read_metadata(path)
    if onednn_graph and (record.format != "torchscript" or not record.portable):
        raise ValueError(
            f"onednn_graph runs portable TorchScript files, but {path} is "
            f"{'portable ' if record.portable else ''}{record.format} (export it with "
            "format='torchscript', portable=True)"
        )
    if record.format == "onnx":
        return _onnx_runner(path, num_threads)
    if record.format == "executorch":
        from deeprebirth.export.executorch import executorch_runner

        return executorch_runner(path, num_threads)
    if record.format == "openvino":
        from deeprebirth.export.openvino import openvino_runner

        return openvino_runner(path, num_threads)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    if record.format == "pt2":
        return _inference(torch.export.load(str(path)).module())
    if record.format == "mobile":
        from torch.jit.mobile import _load_for_lite_interpreter

        return _inference(_load_for_lite_interpreter(str(path)))
    module = torch.jit.load(str(path), map_location="cpu")
    if onednn_graph:
        from deeprebirth.export.onednn_graph import OneDNNGraphModule

        return _inference(OneDNNGraphModule(module))
    return _inference(module)
