"""Shipping a quantized model: ``.pte`` for ``xnnpack``, ``.pt2`` for ``x86_inductor``.

- ``xnnpack``: the converted graph is lowered by :func:`deeprebirth.export.executorch.lower_to_executorch`
  (``to_edge_transform_and_lower`` with the ``XnnpackPartitioner``, at the example's shape): XNNPACK
  takes each ``dequantize -> conv -> quantize`` as one int8 convolution. The file loads with
  :func:`deeprebirth.export.load_exported` like any deeprebirth ``.pte``.
- ``x86_inductor``: the converted graph is saved as a ``torch.export`` program with a dynamic
  batch (:func:`deeprebirth.export.pt2.save_pt2`). It runs as written in eager PyTorch (float
  arithmetic on int8-rounded values: a reference, slow) and in int8 kernels once compiled:
  :func:`inductor_runner` (``torch.compile`` with inductor's ``freezing``).

The metadata record of either file lists ``int8:<backend>`` after the surgery rules.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprebirth.export.metadata import ExportMetadata
from deeprebirth.quantize.int8_share import Int8Share, lowered_int8_share
from deeprebirth.quantize.pipeline import QuantizedModel

SUFFIX = {"xnnpack": ".pte", "x86_inductor": ".pt2"}


@dataclass
class SavedQuantized:
    """What :func:`save_quantized` wrote.

    Attributes:
        path: the file.
        format: ``"executorch"`` or ``"pt2"`` (the metadata record's format).
        delegation: ``.pte`` only: the :class:`~deeprebirth.export.executorch.DelegationReport`.
        delegated_share: ``.pte`` only: the int8 share of what runs inside XNNPACK.
    """

    path: Path
    format: str
    delegation: Any = None
    delegated_share: Int8Share | None = None

    def summary(self) -> str:
        """What runs where, in one or two lines."""
        if self.delegation is None:
            return f"wrote {self.path} (torch.export program; int8 kernels under torch.compile)"
        return (
            f"wrote {self.path}\n{self.delegation.summary()}\n"
            f"inside XNNPACK: {self.delegated_share.summary()}"
        )


def quantized_metadata(
    quantized: QuantizedModel, metadata: Mapping[str, Any] | ExportMetadata | None = None
) -> ExportMetadata:
    """The export record of ``quantized``: ``metadata`` (a model file's, or a record) with the
    input size of the example and ``int8:<backend>[:per_tensor]`` after the rules applied."""
    if isinstance(metadata, ExportMetadata):
        metadata = {k: v for k, v in vars(metadata).items() if k != "input_size"}
    record = ExportMetadata.build(quantized.example_input, metadata)
    step = f"int8:{quantized.backend}" + ("" if quantized.per_channel else ":per_tensor")
    record.rules_applied = [*record.rules_applied, step]
    return record


def save_quantized(
    quantized: QuantizedModel,
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | ExportMetadata | None = None,
) -> SavedQuantized:
    """Writes ``quantized`` in its backend's format (see the module docstring) to ``path``.

    Args:
        quantized: from :func:`~deeprebirth.quantize.pipeline.quantize_model`.
        path: the output file (``.pte`` for xnnpack, ``.pt2`` for x86_inductor by convention).
        metadata: a deeprebirth model file's metadata or an export record (``mean``, ``std``,
            ``class_names``, ``source_model`` …).

    Raises:
        ImportError: executorch is missing (xnnpack).
    """
    path = Path(path)
    record = quantized_metadata(quantized, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    if quantized.backend == "x86_inductor":
        from deeprebirth.export.pt2 import save_pt2

        record.format, record.portable = "pt2", True
        with torch.no_grad():
            save_pt2(quantized.module, quantized.example_input, path, record)
        return SavedQuantized(path, "pt2")
    from deeprebirth.export.executorch import lower_to_executorch

    record.format, record.portable = "executorch", True
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch's pytree LeafSpec note
        edge, delegation = lower_to_executorch(quantized.module, quantized.example_input, record)
        buffer = edge.to_executorch().buffer
    path.write_bytes(buffer)
    share = lowered_int8_share(edge.exported_program().graph_module)
    return SavedQuantized(path, "executorch", delegation, share)


class InductorRunner:
    """``torch.compile`` (inductor, ``freezing``: weights folded and prepacked into oneDNN int8
    kernels) of an ``x86_inductor`` program, compiled here by one call on ``example_input``;
    call it on a batch.

    Inductor's ``freezing`` is set process-wide for the duration of each call, so that every
    compilation Dynamo starts (a new shape, a call under ``torch.inference_mode``, an inference
    tensor where an ordinary one was seen) folds the int8 weights. Setting it only for the first
    call of each (shape, mode) left a later recompilation without it: that graph ran float
    convolutions on weights dequantized per call, 3-5x slower. Passed as a ``torch.compile``
    option instead, the int8 weight prepacking is not folded and compilation fails
    (``UnsupportedOperatorException: onednn.qconv_prepack``, torch 2.13 / torchao 0.18).

    Args:
        program: a ``.pt2`` file from :func:`save_quantized`, or the converted module.
        example_input: an input of the shape to be run.

    Attributes:
        int8_kernels: convolutions and linears inductor turned into oneDNN int8 kernels when it
            compiled ``example_input``'s shape (its pattern counters).

    Raises:
        RuntimeError: inductor cannot compile here (no C++ compiler …).
    """

    def __init__(self, program: str | os.PathLike | nn.Module, example_input: torch.Tensor):
        # The import registers torchao's int8 fusion passes (oneDNN qconv / qlinear) with inductor.
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
        from torch._dynamo.utils import counters

        if not isinstance(program, nn.Module):
            from deeprebirth.export.pt2 import load_pt2

            program = load_pt2(program)[0].module()
        self._compiled = torch.compile(program, dynamic=False)
        keys = ("qconv_weight_prepack_matcher_count", "qlinear_weight_prepack_matcher_count")
        before = sum(counters["inductor"][k] for k in keys)
        self(example_input)
        self.int8_kernels = sum(counters["inductor"][k] for k in keys) - before

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config

        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            return self._compiled(x)


def inductor_runner(
    program: str | os.PathLike | nn.Module, example_input: torch.Tensor
) -> InductorRunner:
    """The :class:`InductorRunner` of ``program`` (a ``.pt2`` of :func:`save_quantized` or the
    converted module), compiled for ``example_input``'s shape."""
    return InductorRunner(program, example_input)
