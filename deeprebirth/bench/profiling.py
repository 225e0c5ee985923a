"""Where forward time goes: operator times from ``torch.profiler``, split into tensor and
non-tensor operators and attributed to the module that ran them (the paper's Table 1 / Figure 2).

:func:`profile_forward` wraps every module's call in a ``record_function`` annotation
(``module/<qualified name>``), profiles a few forward passes and keeps the *top-level* operators:
those not nested inside another operator (``aten::conv2d``, not the ``aten::convolution`` it
calls), each with the innermost module around it. Tensor operators do the network's arithmetic
(convolutions, matrix products, deeprebirth's fused conv ops, see :func:`is_tensor_op`, the same
rule as the C++ runner's ``--bench`` breakdown); everything else (pooling, ReLU, LRN, BatchNorm,
concat, copies) is non-tensor.

Example:
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    >>> profile = profile_forward(model, torch.randn(1, 3, 32, 32), forwards=2)
    >>> sorted({op.name for op in profile.ops})
    ['aten::conv2d', 'aten::max_pool2d', 'aten::relu']
    >>> 0.0 < profile.non_tensor_share() < 1.0
    True
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.profiler import record_function

MODULE_PREFIX = "module/"
TENSOR_OP_PATTERNS = (
    "conv",
    "linear",
    "addmm",
    "matmul",
    "aten::mm",
    "aten::bmm",
    "baddbmm",
    "prepacked::",
)


def is_tensor_op(name: str) -> bool:
    """Whether a profiler operator name is a tensor operator (convolution or matrix product).

    Example:
        >>> is_tensor_op("aten::conv2d"), is_tensor_op("deeprebirth::conv_pool"), is_tensor_op("aten::relu_")
        (True, True, False)
    """
    return any(pattern in name for pattern in TENSOR_OP_PATTERNS)


@dataclass(frozen=True)
class OpRecord:
    """One top-level operator call: name, innermost module (qualified name, ``""`` for the
    root), duration in milliseconds, and whether it is a tensor operator."""

    name: str
    module: str
    ms: float
    tensor: bool


@dataclass(frozen=True)
class LayerTime:
    """Time per forward of one layer, split into tensor and non-tensor operator time.

    A layer is a leaf module (``conv1.conv``) or a functional operator called directly by a
    container (``inception_3a:cat``). ``kind`` is the module class or the operator name.
    """

    name: str
    kind: str
    tensor_ms: float
    non_tensor_ms: float

    @property
    def total_ms(self) -> float:
        """Tensor plus non-tensor time per forward (ms)."""
        return self.tensor_ms + self.non_tensor_ms


@dataclass
class ForwardProfile:
    """Top-level operators and module call durations of ``forwards`` profiled forward passes.

    Attributes:
        ops: every top-level operator call, in execution order.
        module_ms: each module's call durations (ms), by qualified name (root: ``""``).
        module_kinds: class name of every module, by qualified name.
        forwards: how many forward passes were profiled.
    """

    ops: list[OpRecord]
    module_ms: dict[str, list[float]]
    module_kinds: dict[str, str]
    forwards: int

    def op_ms(self, tensor: bool | None = None) -> float:
        """Summed top-level operator time (ms) over all profiled forwards; ``tensor`` filters."""
        return sum(op.ms for op in self.ops if tensor is None or op.tensor == tensor)

    def non_tensor_share(self) -> float:
        """Non-tensor operator time / all top-level operator time, in [0, 1] (0 without ops)."""
        total = self.op_ms()
        return self.op_ms(tensor=False) / total if total > 0 else 0.0

    def op_totals(self) -> dict[str, tuple[float, int, bool]]:
        """``{op name: (ms per forward, calls per forward, tensor)}``, largest time first."""
        totals: dict[str, list] = {}
        for op in self.ops:
            entry = totals.setdefault(op.name, [0.0, 0, op.tensor])
            entry[0] += op.ms
            entry[1] += 1
        ordered = sorted(totals.items(), key=lambda item: -item[1][0])
        return {
            name: (ms / self.forwards, calls // self.forwards, tensor)
            for name, (ms, calls, tensor) in ordered
        }

    def layer_times(self) -> list[LayerTime]:
        """Per-forward time of every layer, in order of first execution (see :class:`LayerTime`)."""
        tensor_ms: dict[str, float] = {}
        other_ms: dict[str, float] = {}
        kinds: dict[str, str] = {}
        leaves = self.leaf_modules()
        for op in self.ops:
            if op.module in leaves:
                name, kind = op.module or "(model)", self.module_kinds.get(op.module, "?")
            else:
                short = op.name.split("::", 1)[-1]
                name, kind = f"{op.module or '(model)'}:{short}", short
            kinds.setdefault(name, kind)
            target = tensor_ms if op.tensor else other_ms
            target[name] = target.get(name, 0.0) + op.ms
        return [
            LayerTime(
                name,
                kind,
                tensor_ms.get(name, 0.0) / self.forwards,
                other_ms.get(name, 0.0) / self.forwards,
            )
            for name, kind in kinds.items()
        ]

    def leaf_modules(self) -> set[str]:
        """Modules that ran and called no other module (``ConvPool2d`` counts as a leaf though
        it owns a ``ParameterList``: only modules that ran are considered)."""
        ran = sorted(self.module_ms)
        return {
            name
            for name in ran
            if not any(other.startswith(f"{name}.") or (not name and other) for other in ran)
        }

    def block_ms(self, blocks: list[str]) -> dict[str, float]:
        """Median call duration (ms) of each named module (e.g. the model's top-level blocks);
        blocks that did not run are left out."""
        return {
            name: statistics.median(self.module_ms[name])
            for name in blocks
            if name in self.module_ms
        }

    def forward_ms(self) -> float:
        """Median duration of the whole profiled forward (the root module's call), in ms."""
        return statistics.median(self.module_ms[""])


@contextmanager
def annotate_modules(model: nn.Module) -> Iterator[None]:
    """Wraps each module call of ``model`` in ``record_function("module/<name>")`` (hooks)."""
    open_ranges: list[record_function] = []

    def enter(module: nn.Module, args: tuple, name: str) -> None:
        annotation = record_function(MODULE_PREFIX + name)
        annotation.__enter__()
        open_ranges.append(annotation)

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        open_ranges.pop().__exit__(None, None, None)

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: enter(m, a, name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _top_level_ops(events) -> tuple[list[OpRecord], dict[str, list[float]]]:
    ops: list[OpRecord] = []
    module_ms: dict[str, list[float]] = {}
    for event in sorted(events, key=lambda e: e.time_range.start):
        ms = event.time_range.elapsed_us() / 1e3
        if event.name.startswith(MODULE_PREFIX):
            module_ms.setdefault(event.name[len(MODULE_PREFIX) :], []).append(ms)
            continue
        module, nested, parent = None, False, event.cpu_parent
        while parent is not None:
            if not parent.name.startswith(MODULE_PREFIX):
                nested = True
                break
            if module is None:
                module = parent.name[len(MODULE_PREFIX) :]
            parent = parent.cpu_parent
        if not nested and module is not None:
            ops.append(OpRecord(event.name, module, ms, is_tensor_op(event.name)))
    return ops, module_ms


def profile_forward(
    model: nn.Module, example: torch.Tensor, forwards: int = 3, warmup: int = 1
) -> ForwardProfile:
    """Profiles ``forwards`` calls of ``model(example)`` (after ``warmup``) on the CPU.

    Operators outside any module call are ignored (there are none in a plain forward). The
    profiler adds a few microseconds per operator, so ``forward_ms`` is a little above the
    unprofiled latency; shares and per-layer proportions are what this is for.

    Args:
        model: an eager ``nn.Module`` in eval mode.
        example: its input, e.g. ``(1, 3, 224, 224)``.
        forwards: profiled forward passes (times are averaged / medians over them).
        warmup: unprofiled passes first (oneDNN primitive creation, allocator warm-up).
    """
    if forwards < 1:
        raise ValueError(f"expected forwards >= 1, but got {forwards}")
    module_kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    with torch.inference_mode():
        for _ in range(warmup):
            model(example)
        with (
            annotate_modules(model),
            torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler,
        ):
            for _ in range(forwards):
                model(example)
    ops, module_ms = _top_level_ops(profiler.events())
    return ForwardProfile(ops, module_ms, module_kinds, forwards)
