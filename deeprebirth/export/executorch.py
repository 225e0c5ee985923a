"""ExecuTorch export (``.pte``) with the XNNPACK delegate: the CPU kernel library of Android and
iOS apps.

The model is made portable (:func:`~deeprebirth.export.portable.make_portable`), exported with
``torch.export`` at the example input's shape (ExecuTorch plans its memory for fixed sizes), any
``torch.ops.deeprebirth`` call left is decomposed into the standard operators it computes
(:func:`~deeprebirth.export.portable.decompose_deeprebirth_ops`), and the program is lowered
by ``executorch.exir.to_edge_transform_and_lower`` with the ``XnnpackPartitioner``. What XNNPACK
does not take runs on ExecuTorch's portable kernels; :class:`DelegationReport` says how much that
is. The metadata record is the program's method ``deeprebirth_metadata`` (it returns the JSON).
Needs the ``executorch`` package (``pip install deeprebirth[deploy]``).
"""

from __future__ import annotations

import collections
import operator
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from deeprebirth.export._optional import import_optional, quiet_import_logs
from deeprebirth.export.concat import distribute_concatenations
from deeprebirth.export.metadata import ExportMetadata
from deeprebirth.export.portable import decompose_deeprebirth_ops, make_portable
from deeprebirth.export.pt2 import contiguous_for_export

METADATA_METHOD = "deeprebirth_metadata"
PURPOSE = "ExecuTorch export (format='executorch')"


@dataclass
class DelegationReport:
    """How much of a lowered program XNNPACK runs.

    Attributes:
        delegated_nodes: operator nodes inside XNNPACK subgraphs.
        total_nodes: every operator node (delegated or not; tuple indexing not counted).
        subgraphs: XNNPACK subgraphs (each call crosses into and out of the delegate).
        left_out: operator name -> how many of its nodes run outside XNNPACK.
    """

    delegated_nodes: int
    total_nodes: int
    subgraphs: int
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def fully_delegated(self) -> bool:
        """Every operator runs inside XNNPACK."""
        return not self.left_out and self.subgraphs > 0

    def summary(self) -> str:
        """One line, e.g. ``XNNPACK: 120/120 nodes delegated in 1 subgraph``."""
        plural = "" if self.subgraphs == 1 else "s"
        line = (
            f"XNNPACK: {self.delegated_nodes}/{self.total_nodes} nodes delegated in "
            f"{self.subgraphs} subgraph{plural}"
        )
        if self.left_out:
            line += "; left to ExecuTorch's portable kernels: " + _listing(self.left_out)
        return line


class DelegationError(ValueError):
    """``require_full_delegation`` was asked and XNNPACK left operators out."""


def _listing(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in sorted(counts.items()))


def _op_name(target: Any) -> str:
    return str(getattr(target, "_op", target))  # EdgeOpOverload wraps the ATen overload


def _is_operator(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is not operator.getitem


def delegation_report(graph_module: fx.GraphModule) -> DelegationReport:
    """The :class:`DelegationReport` of a lowered program's graph
    (``edge_manager.exported_program().graph_module``)."""
    delegated, subgraphs = 0, 0
    left_out: collections.Counter[str] = collections.Counter()
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            lowered = getattr(graph_module, node.target)
            subgraphs += 1
            delegated += sum(map(_is_operator, lowered.original_module.graph.nodes))
        elif _is_operator(node) and "executorch_call_delegate" not in str(node.target):
            left_out[_op_name(node.target)] += 1
    return DelegationReport(
        delegated, delegated + sum(left_out.values()), subgraphs, dict(left_out)
    )


def export_for_executorch(
    model: nn.Module, example_input: torch.Tensor
) -> torch.export.ExportedProgram:
    """The ``torch.export`` program of the portable ``model`` at ``example_input``'s shape, with
    no ``torch.ops.deeprebirth`` call left (each decomposed exactly into standard operators) and
    channel concatenations distributed over their readers where that moves less memory
    (:func:`~deeprebirth.export.concat.distribute_concatenations`: XNNPACK copies each one)."""
    portable, example_input = contiguous_for_export(make_portable(model).eval(), example_input)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch's pytree LeafSpec note
        program = decompose_deeprebirth_ops(torch.export.export(portable, (example_input,)))
        return distribute_concatenations(program)


def lower_to_executorch(
    model: nn.Module, example_input: torch.Tensor, metadata: ExportMetadata | None = None
) -> tuple[Any, DelegationReport]:
    """Lowers ``model`` to ExecuTorch with the XNNPACK partitioner.

    Args:
        model: the network (eval mode is set on a portable copy; ``model`` is not changed).
        example_input: ``(N, C, H, W)``; the program runs exactly this shape.
        metadata: stored as the method ``deeprebirth_metadata`` when given.

    Returns:
        ``(edge_program_manager, report)``: ``executorch.exir.EdgeProgramManager`` (call
        ``.to_executorch().buffer`` for the ``.pte`` bytes) and its :class:`DelegationReport`.

    Raises:
        ImportError: executorch is not installed.
    """
    with quiet_import_logs():
        exir = import_optional("executorch.exir", "executorch", PURPOSE)
        xnnpack = import_optional(
            "executorch.backends.xnnpack.partition.xnnpack_partitioner", "executorch", PURPOSE
        )
    program = export_for_executorch(model, example_input)
    constant_methods = {METADATA_METHOD: metadata.to_json()} if metadata is not None else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        edge = exir.to_edge_transform_and_lower(
            program,
            partitioner=[xnnpack.XnnpackPartitioner()],
            constant_methods=constant_methods,
        )
    return edge, delegation_report(edge.exported_program().graph_module)


def save_executorch(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    metadata: ExportMetadata,
    require_full_delegation: bool = False,
) -> Path:
    """Writes the ``.pte`` program of ``model`` (XNNPACK-delegated, metadata inside) to ``path``;
    prints the :meth:`DelegationReport.summary` and returns the path.

    Raises:
        DelegationError: ``require_full_delegation`` and XNNPACK left operators out (named in
            the message); nothing is written.
        ImportError: executorch is not installed.
    """
    path = Path(path)
    metadata.portable = True
    edge, report = lower_to_executorch(model, example_input, metadata)
    if require_full_delegation and not report.fully_delegated:
        raise DelegationError(
            f"require_full_delegation: XNNPACK did not take {_listing(report.left_out)} "
            f"({report.delegated_nodes}/{report.total_nodes} nodes delegated in "
            f"{report.subgraphs} subgraphs); {path} was not written"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        buffer = edge.to_executorch().buffer
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer)
    print(report.summary())
    return path


def _runtime() -> Any:
    with quiet_import_logs():
        return import_optional("executorch.runtime", "executorch", "Running a .pte file").Runtime


# ExecuTorch's thread pool is process-wide, and a loaded XNNPACK method keeps a pointer to the
# pool it was loaded with: a resize frees that pool, and running such a method then crashes the
# process. Every resize bumps this count; runners reload their method when it moved.
_pool_generation = 0


def thread_pool_generation() -> int:
    """How many times :func:`set_executorch_threads` has resized ExecuTorch's thread pool in
    this process; a method loaded at another count must be loaded again before it runs."""
    return _pool_generation


def set_executorch_threads(num_threads: int) -> None:
    """Sets the size of ExecuTorch's (process-wide) thread pool, which XNNPACK runs on.

    Methods loaded before a resize hold the old pool: the runners of :func:`executorch_runner`
    reload theirs on their next call (see :func:`thread_pool_generation`). Asking for the size
    the pool has changes nothing.

    Raises:
        ValueError: ``num_threads`` < 1.
    """
    global _pool_generation
    if num_threads < 1:
        raise ValueError(f"expected num_threads >= 1, but got {num_threads}")
    with quiet_import_logs():
        portable_lib = import_optional(
            "executorch.extension.pybindings.portable_lib", "executorch", "Running a .pte file"
        )
    if portable_lib._threadpool_get_thread_count() != num_threads:
        portable_lib._unsafe_reset_threadpool(int(num_threads))
        _pool_generation += 1


def is_pte(head: bytes) -> bool:
    """Whether a file starting with ``head`` (8 bytes or more) is an ExecuTorch program
    (flatbuffer identifier ``ET..`` at byte 4)."""
    return len(head) >= 8 and head[4:6] == b"ET"


def read_executorch_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The metadata record of a ``.pte`` file written by :func:`save_executorch`.

    Raises:
        ValueError: the program has no ``deeprebirth_metadata`` method.
        ImportError: executorch is not installed.
    """
    program = _runtime().get().load_program(str(path))
    if METADATA_METHOD not in program.method_names:
        raise ValueError(f"{path} has no {METADATA_METHOD!r} method (not written by deeprebirth)")
    (text,) = program.load_method(METADATA_METHOD).execute([])
    return ExportMetadata.from_json(text)


def executorch_runner(
    path: str | os.PathLike, num_threads: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``forward`` method of the ``.pte`` file as a function of a batch.

    The program runs the shape it was exported with; a program exported for one image runs a
    larger batch one image at a time. ``num_threads`` resizes ExecuTorch's process-wide pool
    (:func:`set_executorch_threads`); after any later resize the function loads the method again
    on its next call, so runners made at different thread counts are safe to keep.

    Raises:
        ValueError (when called): an input of another shape.
        ImportError: executorch is not installed.
    """
    if num_threads is not None:
        set_executorch_threads(num_threads)
    program = str(path)
    loaded: list = [None, -1]  # [method, the pool generation it was loaded at]

    def method() -> Any:
        if loaded[1] != _pool_generation:
            loaded[:] = [
                _runtime().get().load_program(program).load_method("forward"),
                _pool_generation,
            ]
        return loaded[0]

    expected = tuple(method().metadata.input_tensor_meta(0).sizes())

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu().contiguous()
        if tuple(x.shape) == expected:
            return method().execute([x])[0].clone()
        if expected[0] == 1 and tuple(x.shape[1:]) == expected[1:]:
            return torch.cat([method().execute([image])[0].clone() for image in x.split(1)])
        raise ValueError(f"{path} runs inputs of shape {list(expected)}, but got {list(x.shape)}")

    return run
