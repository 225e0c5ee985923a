"""Where each changed block's regression compares student and teacher: block regression targets.

A block's regression feeds the student block the teacher's input of that block and compares its
output with the teacher's output of the same block — possible only while the two have the same
shape. A rule may change a block's output size: ``streamline`` on a torchvision ResNet folds
``conv1 -> bn1 -> maxpool`` into one stride-4 convolution in ``conv1`` (``bn1`` and ``maxpool``
become ``Identity``), so the student's ``conv1`` ends at a quarter of the teacher's resolution.
For such a block the regression runs on in the model's own block order until the first point
where student and teacher agree again — here after ``maxpool``, the pool the rule absorbed — and
compares there (``"extended"``). Where no later point agrees before the classifier, or the
blocks in between are not a plain chain in the model's forward, the teacher's output is
average-pooled to the student's size instead (``"pooled"``). Blocks whose output already agrees
regress their own output (``"output"``).

A :class:`Segment` is one regression target: the blocks run in sequence (the changed ones and the
unchanged ones they pass through), how it was aligned, and a sentence saying so that the job
logs. Changed blocks without parameters (an ``Identity`` left by a rule) join their neighbour's
segment: nothing in them could learn.

Example:
    >>> segments = plan_segments(teacher, student, ["conv1", "bn1", "maxpool"], (1, 3, 64, 64))
    >>> [(s.blocks, s.how) for s in segments]  # doctest: +SKIP
    [(('conv1', 'bn1', 'relu', 'maxpool'), 'extended')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ALIGNMENTS = ("output", "extended", "pooled")


@dataclass(frozen=True)
class Segment:
    """One regression target: ``blocks`` (top-level children, in forward order) run in sequence
    from the teacher's input of ``blocks[0]``; ``changed`` are the changed blocks among them;
    the result is compared with the teacher's output of ``blocks[-1]``, average-pooled to the
    student's spatial size when ``how == "pooled"``. ``note`` says why, for the log."""

    blocks: tuple[str, ...]
    changed: tuple[str, ...]
    how: str
    note: str

    @property
    def first(self) -> str:
        """The block whose teacher input feeds the segment."""
        return self.blocks[0]

    @property
    def last(self) -> str:
        """The block whose teacher output is the target."""
        return self.blocks[-1]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (checkpoints, metrics)."""
        return {**asdict(self), "blocks": list(self.blocks), "changed": list(self.changed)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Segment:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(record["blocks"]), tuple(record["changed"]), record["how"], record["note"])


def align_target(segment: Segment, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The teacher's ``target`` in the form the student's ``output`` is compared with."""
    if segment.how == "pooled" and target.shape[-2:] != output.shape[-2:]:
        return F.adaptive_avg_pool2d(target, output.shape[-2:])
    return target


@torch.no_grad()
def _trace_children(
    model: nn.Module, example: torch.Tensor
) -> tuple[list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The top-level children in the order the forward first calls them, with the input and
    output of that first call (cloned)."""
    order: list[str] = []
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def record(name: str, args: tuple, output: Any) -> None:
        if name in inputs or not args or not isinstance(args[0], torch.Tensor):
            return
        if isinstance(output, torch.Tensor):
            order.append(name)
            inputs[name], outputs[name] = args[0].clone(), output.clone()

    handles = [
        child.register_forward_hook(lambda m, a, o, n=name: record(n, a, o))
        for name, child in model.named_children()
    ]
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return order, inputs, outputs


def _has_parameters(model: nn.Module, names: Sequence[str]) -> bool:
    children = dict(model.named_children())
    return any(True for name in names for _ in children[name].parameters())


@torch.no_grad()
def _is_chain(model: nn.Module, blocks: Sequence[str], start: torch.Tensor, end: torch.Tensor):
    """Whether running ``blocks`` one after the other on ``start`` gives ``end`` (the model's
    forward does nothing else between them: no skip connection, no flatten)."""
    was_training = model.training
    model.eval()
    try:
        x = start
        for name in blocks:
            x = model.get_submodule(name)(x)
    except Exception:  # a block that needs more than the previous block's output
        return False
    finally:
        model.train(was_training)
    return x.shape == end.shape and torch.allclose(x, end, rtol=1e-4, atol=1e-5)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape[1:])


def plan_segments(
    teacher: nn.Module,
    student: nn.Module,
    changed: Sequence[str],
    example_shape: Sequence[int],
) -> list[Segment]:
    """The regression targets of the ``changed`` blocks (see the module docstring).

    Args:
        teacher: the original model.
        student: the slimmed model (same top-level block names).
        changed: the changed blocks (:func:`deeprebirth.train.schedule.changed_blocks`).
        example_shape: ``(1, C, H, W)`` of the training input; one forward of each model on a
            random input of it finds the shapes.

    Returns:
        Segments in forward order, together covering every changed block exactly once.

    Raises:
        ValueError: a changed block whose output size differs from the teacher's, with no
            later point that agrees and an output that pooling cannot align (the message names
            the block and both shapes).
    """
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(tuple(example_shape), generator=generator).to(device)
    order, t_in, t_out = _trace_children(teacher, example)
    s_order, _, s_out = _trace_children(student, example)
    changed = list(changed)
    # Blocks the forward never calls with a tensor get the old behaviour: their own output.
    called = [name for name in order if name in s_out]
    raw: list[Segment] = []
    index = 0
    while index < len(called):
        name = called[index]
        if name not in changed:
            index += 1
            continue
        if _shape(s_out[name]) == _shape(t_out[name]):
            raw.append(Segment((name,), (name,), "output", f"{name}: output sizes agree"))
            index += 1
            continue
        segment = _extend(teacher, called, index, changed, t_in, t_out, s_out)
        raw.append(segment)
        index = called.index(segment.last) + 1
    missing = [name for name in changed if not any(name in s.changed for s in raw)]
    raw += [Segment((n,), (n,), "output", f"{n}: not called by the forward") for n in missing]
    return _merge_parameterless(raw, student, called, t_in, t_out, teacher)


def _extend(
    teacher: nn.Module,
    order: list[str],
    index: int,
    changed: list[str],
    t_in: dict[str, torch.Tensor],
    t_out: dict[str, torch.Tensor],
    s_out: dict[str, torch.Tensor],
) -> Segment:
    """The segment of a changed block whose output size differs: to the first later block
    whose output agrees (a plain chain), else pooled."""
    name = order[index]
    student_shape, teacher_shape = _shape(s_out[name]), _shape(t_out[name])
    differs = f"{name}: student output {student_shape} != teacher output {teacher_shape}"
    for end in range(index + 1, len(order)):
        last = order[end]
        if _shape(s_out[last]) != _shape(t_out[last]):
            continue
        blocks = tuple(order[index : end + 1])
        if end < len(order) - 1 and _is_chain(teacher, blocks, t_in[name], t_out[last]):
            return Segment(
                blocks,
                tuple(b for b in blocks if b in changed),
                "extended",
                f"{differs}; regressing {' -> '.join(blocks)} against the teacher's {last} "
                "output, the first point where they agree",
            )
        break
    same_channels = student_shape[:1] == teacher_shape[:1] and len(student_shape) == 3
    smaller = same_channels and all(
        s <= t for s, t in zip(student_shape[1:], teacher_shape[1:], strict=True)
    )
    if not smaller:
        raise ValueError(
            f"{differs}, and no later block agrees in a plain chain, nor can the teacher's "
            "output be pooled to the student's size; group it with the blocks after it in "
            "schedule.stages or use schedule.regression_steps=0"
        )
    return Segment(
        (name,),
        (name,),
        "pooled",
        f"{differs}; regressing against the teacher's {name} output average-pooled to "
        f"{tuple(student_shape[1:])}",
    )


def _merge_parameterless(
    segments: list[Segment],
    student: nn.Module,
    order: list[str],
    t_in: dict[str, torch.Tensor],
    t_out: dict[str, torch.Tensor],
    teacher: nn.Module,
) -> list[Segment]:
    """Joins each segment without student parameters to the segment before it, where the blocks
    between form a plain chain; the others stay as they are (their regression trains nothing)."""
    position = {name: i for i, name in enumerate(order)}
    merged: list[Segment] = []
    for segment in sorted(segments, key=lambda s: position.get(s.first, len(order))):
        joined = None
        if merged and not _has_parameters(student, segment.blocks):
            joined = _join(merged[-1], segment, order, position, t_in, t_out, teacher)
        if joined is not None:
            merged[-1] = joined
        else:
            merged.append(segment)
    return merged


def _join(
    a: Segment,
    b: Segment,
    order: list[str],
    position: dict[str, int],
    t_in: dict[str, torch.Tensor],
    t_out: dict[str, torch.Tensor],
    teacher: nn.Module,
) -> Segment | None:
    """``a`` extended through ``b`` (which has no parameters), or None when they cannot be one:
    a block outside the forward, a pooled target, or blocks between that are no plain chain."""
    if a.first not in position or b.last not in position or "pooled" in (a.how, b.how):
        return None
    blocks = tuple(order[position[a.first] : position[b.last] + 1])
    if not _is_chain(teacher, blocks, t_in[a.first], t_out[b.last]):
        return None
    note = (
        f"{a.note}; {', '.join(b.changed)} changed but has no parameters: regressing "
        f"{' -> '.join(blocks)} against the teacher's {b.last} output"
    )
    return Segment(blocks, (*a.changed, *b.changed), "extended", note)


class SegmentStack(nn.Module):
    """The student segments of one stage run side by side: ``{first: input} -> {first: output}``.

    Only the changed blocks are registered (so only their parameters reach the optimizer and
    DistributedDataParallel); the unchanged blocks a segment passes through run frozen, as they
    are in the working model.
    """

    def __init__(self, model: nn.Module, segments: Sequence[Segment]) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict(
            {name: model.get_submodule(name) for s in segments for name in s.changed}
        )
        self._segments = list(segments)
        self._passing = {
            name: model.get_submodule(name)
            for s in segments
            for name in s.blocks
            if name not in s.changed
        }
        for block in self._passing.values():
            block.eval()  # frozen: BatchNorm statistics of unchanged blocks stay as they are

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = {}
        for segment in self._segments:
            x = inputs[segment.first]
            for name in segment.blocks:
                block = self.blocks[name] if name in self.blocks else self._passing[name]
                x = block(x)
            outputs[segment.first] = x
        return outputs
