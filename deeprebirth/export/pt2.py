"""``torch.export`` (``.pt2``) export: the forward path for deployment after TorchScript.

The exported program keeps ``torch.ops.deeprebirth.*`` nodes unless ``portable``; loading such a
file (``torch.export.load``) needs ``import deeprebirth`` first. The metadata record is the extra
file ``deeprebirth.json``. AOTInductor packaging (``torch._inductor.aoti_compile_and_package``) is
not done here: it needs a C++ compiler at export time and produces a platform-specific library.
"""

from __future__ import annotations

import copy
import itertools
import os
from pathlib import Path

import torch
from torch import nn

from deeprebirth.export.metadata import METADATA_FILE, ExportMetadata


def dynamic_batch() -> tuple[dict[int, torch.export.Dim]]:
    """``dynamic_shapes`` of a one-input model whose batch dimension is dynamic (1 to 4096)."""
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def contiguous_for_export(
    model: nn.Module, example_input: torch.Tensor
) -> tuple[nn.Module, torch.Tensor]:
    """``model`` (a contiguous copy when any weight is not) and a contiguous ``example_input``.

    Channels_last weights (e.g. from channels_last training) make ``torch.export`` specialise the
    batch of a one-image example, whose strides are ambiguous, and fail the dynamic batch.
    """
    tensors = itertools.chain(model.parameters(), model.buffers())
    if not all(t.is_contiguous() for t in tensors):
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    return model, example_input.contiguous()


def export_program(model: nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` (eval mode) with a dynamic batch dimension.

    A one-image example is traced as two copies of the image: torch.export specialises sizes 0
    and 1, so a batch of one cannot stand for a dynamic batch.
    """
    model, example_input = contiguous_for_export(model.eval(), example_input)
    if example_input.size(0) == 1:
        example_input = example_input.expand(2, *example_input.shape[1:]).contiguous()
    return torch.export.export(model, (example_input,), dynamic_shapes=dynamic_batch())


def save_pt2(
    model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, metadata: ExportMetadata
) -> Path:
    """Writes the exported program of ``model`` with the metadata as extra file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(
        export_program(model, example_input),
        str(path),
        extra_files={METADATA_FILE: metadata.to_json()},
    )
    return path


def load_pt2(path: str | os.PathLike) -> tuple[torch.export.ExportedProgram, ExportMetadata]:
    """Loads a file written by :func:`save_pt2`; returns ``(program, metadata)``."""
    import deeprebirth  # noqa: F401  (registers torch.ops.deeprebirth for native programs)

    extra = {METADATA_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program, ExportMetadata.from_json(extra[METADATA_FILE])
