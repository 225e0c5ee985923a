"""The layer-wise schedule: which blocks changed, in which order they are learned, in which phases.

Blocks are the model's top-level children. A block "changed" when its structure (module types
and settings, parameter names and shapes) differs between teacher and student. Layer-wise mode learns the
changed blocks bottom to top, one per stage (or in the configured groups; blocks that regress
together, :mod:`deeprebirth.train.alignment`, share one); each stage is a regression phase (MSE
against the teacher's output where the two agree) and a finetune phase (task loss).
All-at-once mode has one stage holding every changed block.

Example:
    >>> phases = plan_phases(["conv1", "inception_3a"], cfg)  # doctest: +SKIP
    >>> [p.name for p in phases]  # doctest: +SKIP
    ['regress:conv1', 'finetune:conv1', 'regress:inception_3a', 'finetune:inception_3a']
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


def block_signature(block: nn.Module) -> tuple:
    """The structure of a block: every sub-module's name, type and settings (``extra_repr``: a
    convolution's stride and padding, which a rule may change with the weight shapes kept),
    every parameter's shape."""
    modules = tuple((name, type(m).__name__, m.extra_repr()) for name, m in block.named_modules())
    params = tuple((name, tuple(p.shape)) for name, p in block.named_parameters())
    return modules, params


def changed_blocks(teacher: nn.Module, student: nn.Module) -> list[str]:
    """Names of the student's top-level children whose structure differs from the teacher's,
    in the student's (bottom-to-top) order.

    Raises:
        ValueError: a changed student block has no teacher block of the same name (the regression
            target would be undefined).
    """
    teacher_blocks = dict(teacher.named_children())
    changed = []
    for name, block in student.named_children():
        if name not in teacher_blocks:
            raise ValueError(
                f"student block {name!r} has no teacher block of the same name; "
                f"teacher blocks: {list(teacher_blocks)}"
            )
        if block_signature(block) != block_signature(teacher_blocks[name]):
            changed.append(name)
    return changed


def group_stages(
    changed: list[str],
    mode: str,
    groups: list[list[str]] | None,
    units: list[list[str]] | None = None,
) -> list[list[str]]:
    """The blocks learned in each stage.

    ``groups`` (config ``schedule.stages``) must cover exactly the changed blocks, bottom to top;
    without it each unit is its own stage (``layerwise``) or all are one (``all_at_once``).
    ``units`` are changed blocks that regress together and so share a stage (the ``changed`` of
    each :class:`deeprebirth.train.alignment.Segment`); default: each changed block alone.

    Raises:
        ValueError: a group names an unchanged/unknown block, misses one, is out of order, or
            splits a unit.
    """
    if mode == "all_at_once":
        return [list(changed)] if changed else []
    units = [list(unit) for unit in units] if units is not None else [[n] for n in changed]
    if not groups:
        return units
    flat = [name for group in groups for name in group]
    if sorted(flat) != sorted(changed) or len(set(flat)) != len(flat):
        raise ValueError(
            f"schedule.stages expects a grouping of exactly the changed blocks {changed}, but got {groups}"
        )
    if flat != changed:
        raise ValueError(
            f"schedule.stages expects the blocks bottom to top ({changed}), but got {groups}"
        )
    stage_of = {name: index for index, group in enumerate(groups) for name in group}
    for unit in units:
        if len({stage_of.get(name) for name in unit}) > 1:
            raise ValueError(
                f"schedule.stages splits {unit} over several stages, but they regress as one "
                "(a rule changed their output size); put them in one group"
            )
    return [list(group) for group in groups]


@dataclass(frozen=True)
class Phase:
    """One training phase: ``kind`` is ``teacher``, ``regress`` or ``finetune``; ``final`` marks
    the closing finetune of the whole student (every block's new layers)."""

    kind: str
    blocks: tuple[str, ...]
    steps: int
    stage: int  # 0 for the teacher, 1.. for student stages
    final: bool = False

    @property
    def name(self) -> str:
        if self.final:
            return "finetune:all"
        return self.kind if self.kind == "teacher" else f"{self.kind}:{'+'.join(self.blocks)}"


def plan_phases(
    stages: list[list[str]],
    regression_steps: int,
    finetune_steps: int,
    teacher_steps: int = 0,
    final_steps: int = 0,
) -> list[Phase]:
    """The ordered phases: optional teacher training, regression + finetune per stage, then an
    optional final finetune of the whole student (``final_steps``).

    Phases with zero steps are omitted.
    """
    phases = [Phase("teacher", (), teacher_steps, 0)] if teacher_steps else []
    for index, blocks in enumerate(stages, start=1):
        if regression_steps:
            phases.append(Phase("regress", tuple(blocks), regression_steps, index))
        if finetune_steps:
            phases.append(Phase("finetune", tuple(blocks), finetune_steps, index))
    if final_steps and stages:
        every_block = tuple(block for blocks in stages for block in blocks)
        phases.append(Phase("finetune", every_block, final_steps, len(stages) + 1, final=True))
    return phases
