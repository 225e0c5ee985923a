"""The finetune job: (teacher training) -> layer-wise block regression + finetuning -> report.

The job keeps a *working model*: the student with every changed block not yet learned replaced
by a copy of the teacher's block. Stage k swaps in the student blocks of stage k, regresses them
against the teacher's block outputs (only their parameters train), then finetunes the working
model on the task loss (stage blocks' new parameters at ``new_layer_lr_mult`` x LR). After the
last stage the working model *is* the student. Accuracy is measured after each phase (the
paper's "accuracy after merging each layer"), checkpoints are written atomically, and a resumed
run continues from the exact step with the same RNG states.

Example:
    >>> cfg = load_config("configs/synthetic_smoke.yaml", ["output_dir=/tmp/run"])  # doctest: +SKIP
    >>> result = run_job(cfg, student=my_student)  # doctest: +SKIP
    >>> result.history[-1]["top1"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from deeprebirth import io
from deeprebirth.models.recipe import get_recipe, rebuild, set_recipe
from deeprebirth.train import checkpoint as ckpt
from deeprebirth.train.alignment import Segment, SegmentStack, align_target, plan_segments
from deeprebirth.train.config import ConfigError, config_to_yaml
from deeprebirth.train.data import Datasets, build_datasets, input_normalization
from deeprebirth.train.distributed import (
    DistContext,
    ResumableSampler,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from deeprebirth.train.loop import (
    MetricsLogger,
    autocast,
    capture_block_io,
    evaluate,
    regression_loss,
    task_loss,
)
from deeprebirth.train.optim import build_optimizer, build_scheduler, param_groups
from deeprebirth.train.quantize_stage import QUANTIZE_FILES, run_quantize_stage
from deeprebirth.train.report import measure_speed, write_report
from deeprebirth.train.schedule import Phase, changed_blocks, group_stages, plan_phases
from deeprebirth.train.student import build_student, check_surgery_rules, load_teacher

StudentSpec = nn.Module | Callable[[nn.Module], tuple[nn.Module, list[str]]] | None


@dataclass
class JobResult:
    """What a run produced. ``stopped`` is True when ``debug.stop_after_steps`` ended it early;
    ``student`` is then the partly trained working model (None if not built yet)."""

    student: nn.Module | None
    teacher: nn.Module
    history: list[dict[str, Any]]
    stages: list[list[str]]
    output_dir: Path
    stopped: bool = False
    speed: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class _State:
    """Everything a checkpoint holds besides RNG states."""

    teacher: nn.Module
    teacher_phase: bool  # the plan starts with teacher training
    phase_index: int = 0
    step: int = 0
    working: nn.Module | None = None
    student_recipe: dict[str, Any] | None = None  # None: a student built by the caller
    pending: nn.ModuleDict | None = None  # student blocks not swapped in yet
    new_names: list[str] = field(default_factory=list)
    stages: list[list[str]] | None = None
    segments: list[dict[str, Any]] | None = None  # regression targets (Segment.to_dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    optimizer: dict | None = None
    scheduler: dict | None = None


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seeds torch, numpy and python; ``deterministic`` turns on deterministic algorithms."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if deterministic:
        torch.backends.cudnn.benchmark = False


def _make_student(
    teacher: nn.Module, cfg, student: StudentSpec
) -> tuple[nn.Module, list[str] | None]:
    if student is None:
        return build_student(teacher, cfg)
    if isinstance(student, nn.Module):
        return copy.deepcopy(student), None
    return student(teacher)


def _split_working(
    teacher: nn.Module, student: nn.Module, names: list[str]
) -> tuple[nn.Module, nn.ModuleDict]:
    """The working model (``student`` with the teacher's blocks ``names`` in place of its own) and
    the student blocks set aside, in ``names`` order."""
    teacher_blocks = dict(teacher.named_children())
    working = copy.deepcopy(student)
    pending = nn.ModuleDict()
    for name in names:
        pending[name] = getattr(working, name)
        setattr(working, name, copy.deepcopy(teacher_blocks[name]))
    return working, pending


def example_shape(cfg) -> tuple[int, int, int, int]:
    """``(1, C, S, S)``: one training input of ``cfg.model``."""
    size = cfg.model.input_size
    return (1, cfg.model.in_channels, size, size)


def _plan_segments(teacher: nn.Module, student: nn.Module, cfg) -> list[Segment]:
    """:func:`deeprebirth.train.alignment.plan_segments` of the changed blocks, errors as
    :class:`ConfigError` (raised before any student training)."""
    try:
        changed = changed_blocks(teacher, student)
        return plan_segments(teacher, student, changed, example_shape(cfg))
    except ValueError as error:
        raise ConfigError(f"surgery: {error}") from error


def _init_working(state: _State, student: nn.Module, new_names: list[str] | None, cfg) -> None:
    """Sets up the working model, pending blocks, regression targets and stages from a fresh
    student."""
    changed = changed_blocks(state.teacher, student)
    segments = _plan_segments(state.teacher, student, cfg)
    try:
        stages = group_stages(
            changed,
            cfg.schedule.mode,
            [list(g) for g in cfg.schedule.stages] if cfg.schedule.stages else None,
            [list(segment.changed) for segment in segments],
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error
    state.segments = [segment.to_dict() for segment in segments]
    if new_names is None:  # hand-built student: every parameter of a changed block is new
        new_names = [n for n, _ in student.named_parameters() if n.split(".", 1)[0] in changed]
    state.student_recipe = get_recipe(student)
    working, pending = _split_working(state.teacher, student, list(changed))
    state.working, state.pending, state.new_names, state.stages = (
        working,
        pending,
        list(new_names),
        stages,
    )


_PLAIN_FIELDS = (
    "teacher_phase",
    "phase_index",
    "step",
    "new_names",
    "stages",
    "history",
    "optimizer",
    "scheduler",
    "segments",
)
# Files a run writes into output_dir; ``overwrite=true`` removes these and nothing else.
RUN_FILES = (
    ckpt.CHECKPOINT_NAME,
    "config.yaml",
    "metrics.jsonl",
    "report.md",
    "accuracy.png",
    "teacher.pt",
    "student.pt",
    *QUANTIZE_FILES,
)


def _state_record(state: _State) -> dict[str, Any]:
    """``state`` as tensors and plain data (models as recipe + state dict)."""
    record: dict[str, Any] = {k: getattr(state, k) for k in _PLAIN_FIELDS}
    record["teacher"] = {
        "recipe": get_recipe(state.teacher),
        "state_dict": state.teacher.state_dict(),
    }
    if state.working is not None:
        record["student_recipe"] = state.student_recipe
        record["working"] = state.working.state_dict()
        record["pending_names"] = list(state.pending.keys())
        record["pending"] = state.pending.state_dict()
    return record


def _state_from_record(record: dict[str, Any], cfg, student: StudentSpec) -> _State:
    """Rebuilds the :class:`_State` of a checkpoint (models from recipes, then weights)."""
    where = str(ckpt.checkpoint_path(cfg.output_dir))
    teacher = io.model_from_record(record["teacher"], f"{where} (teacher)")
    set_recipe(teacher, record["teacher"].get("recipe"))
    # Checkpoints written before regression targets were planned lack "segments".
    state = _State(teacher=teacher, **{k: record.get(k) for k in _PLAIN_FIELDS})
    state.history = state.history or []
    state.new_names = state.new_names or []
    if "working" not in record:
        return state
    if record.get("student_recipe") is not None:
        template = rebuild(record["student_recipe"])
    else:  # a student built by the caller: the same ``student=`` must be passed again
        with torch.random.fork_rng(devices=[]):
            template = _make_student(teacher, cfg, student)[0]
    if state.segments is None:
        state.segments = [s.to_dict() for s in _plan_segments(teacher, template, cfg)]
    working, pending = _split_working(teacher, template, record["pending_names"])
    try:
        working.load_state_dict(record["working"])
        pending.load_state_dict(record["pending"])
    except RuntimeError as error:
        raise ValueError(f"{where}: the student's weights do not fit its model: {error}") from error
    state.working, state.pending = working, pending
    state.student_recipe = record.get("student_recipe")
    return state


def _check_output_dir(cfg, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from, after refusing anything that would lose a finished run.

    Raises:
        ConfigError: ``output_dir`` is a file; resume without a checkpoint; a new run into a
            folder holding a run's files without ``overwrite``; an unreadable checkpoint.
    """
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is a file, expected a folder")
    if resume:
        try:
            record = ckpt.load_checkpoint(out)
        except ValueError as error:
            raise ConfigError(f"resume: {error}") from error
        if record is None:
            raise ConfigError(
                f"resume: no {ckpt.CHECKPOINT_NAME} in {out}: nothing to resume (start a new run "
                "with another output_dir, or overwrite=true to replace this one)"
            )
        return record
    found = sorted(name for name in RUN_FILES if (out / name).exists())
    if found and not cfg.overwrite:
        raise ConfigError(
            f"output_dir: {out} already holds a run ({', '.join(found)}); resume it with "
            "--resume, choose another output_dir, or pass overwrite=true (--overwrite) to "
            "replace it"
        )
    return None


def _check_ranks_agree(cfg, ctx: DistContext) -> None:
    """Fails on every rank, before any other collective, when the ranks see different contents
    of ``output_dir`` (a multi-node run whose output_dir is not on a shared filesystem).

    Raises:
        ConfigError: some ranks see a checkpoint or a finished run's files and others do not.
    """
    if not ctx.enabled:
        return
    out = Path(cfg.output_dir)
    seen = torch.tensor(
        [
            float(ckpt.checkpoint_path(out).is_file()),
            float(any((out / n).exists() for n in RUN_FILES)),
        ]
    )
    counts = all_reduce_sum(seen, ctx)
    for what, count in zip(("a checkpoint", "a run's files"), counts.tolist(), strict=True):
        if 0 < count < ctx.world_size:
            raise ConfigError(
                f"output_dir: {int(count)} of {ctx.world_size} ranks see {what} in {out} and the "
                "others do not; a multi-node run needs output_dir on a filesystem every node shares"
            )


def _clear_run_files(out: Path) -> None:
    """Removes the files of an earlier run (``overwrite=true``), so none mixes with the new one."""
    import shutil

    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)


def _phases(state: _State, cfg, steps_per_epoch: int) -> list[Phase]:
    t = cfg.teacher.train
    teacher_steps = (t.epochs * steps_per_epoch or t.steps) if state.teacher_phase else 0
    s = cfg.schedule
    finetune_steps = s.finetune_epochs * steps_per_epoch or s.finetune_steps
    final_steps = s.final_finetune_epochs * steps_per_epoch or s.final_finetune_steps
    return plan_phases(
        state.stages or [], s.regression_steps, finetune_steps, teacher_steps, final_steps
    )


class _Job:
    """One run of the job on this rank (see the module docstring)."""

    def __init__(self, cfg, ctx: DistContext, data: Datasets) -> None:
        self.cfg, self.ctx, self.data = cfg, ctx, data
        self.out = Path(cfg.output_dir)
        self.log = MetricsLogger(self.out, ctx.is_main, cfg.tensorboard)
        self.steps_run = 0
        self.sampler = ResumableSampler(
            data.train, ctx, shuffle=True, seed=cfg.seed, drop_last=True
        )
        self.train_loader = self._loader(data.train, self.sampler, cfg.batch_size, drop_last=True)
        eval_sampler = ResumableSampler(
            data.val, ctx, shuffle=False, seed=cfg.seed, drop_last=False
        )
        self.val_loader = self._loader(
            data.val, eval_sampler, cfg.eval_batch_size or cfg.batch_size, False
        )
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {cfg.batch_size} is larger than the {len(self.sampler)} training samples of this rank"
            )

    def _loader(self, dataset, sampler, batch_size: int, drop_last: bool) -> DataLoader:
        # An own generator: creating an iterator must not draw from the global RNG (exact resume).
        generator = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.cfg.workers,
            drop_last=drop_last,
            generator=generator,
            persistent_workers=False,
            pin_memory=self.ctx.device.type == "cuda",
        )

    # ------------------------------------------------------------------ phase set-up

    def _swap_in(self, state: _State, blocks: tuple[str, ...]) -> None:
        for name in blocks:
            if name in state.pending:
                setattr(state.working, name, state.pending[name])
                del state.pending[name]

    def _trainable(self, state: _State, phase: Phase) -> tuple[nn.Module, list[dict]]:
        """The module to train in ``phase`` and its optimizer parameter groups."""
        cfg = self.cfg
        if phase.kind == "teacher":
            t = cfg.teacher.train
            return state.teacher, param_groups(state.teacher, [], t.lr, 1.0)
        for p in state.working.parameters():
            p.requires_grad_(False)
        stage_new = [n for n in state.new_names if n.split(".", 1)[0] in phase.blocks]
        if phase.kind == "regress":
            stack = SegmentStack(state.working, self._segments(state, phase))
            return stack, param_groups(
                stack, {f"blocks.{n}" for n in stage_new}, cfg.lr, cfg.new_layer_lr_mult
            )
        groups = param_groups(
            state.working,
            stage_new,
            cfg.lr,
            cfg.new_layer_lr_mult,
            train_old=not cfg.schedule.freeze_old,
        )
        return state.working, groups

    @staticmethod
    def _segments(state: _State, phase: Phase) -> list[Segment]:
        """The regression targets of ``phase``'s blocks."""
        segments = [Segment.from_dict(record) for record in state.segments or []]
        return [s for s in segments if set(s.changed) <= set(phase.blocks)]

    def _optimizer(self, phase: Phase, groups: list[dict]):
        cfg = self.cfg
        if phase.kind == "teacher":
            t = cfg.teacher.train
            opt = build_optimizer(groups, t.optimizer, t.momentum, t.weight_decay)
            return opt, build_scheduler(opt, phase.steps, t.lr_schedule, t.warmup_steps)
        o, s = cfg.optimizer, cfg.lr_schedule
        opt = build_optimizer(groups, o.name, o.momentum, o.weight_decay, o.nesterov)
        return opt, build_scheduler(opt, phase.steps, s.name, s.warmup_steps, s.step_size, s.gamma)

    # ------------------------------------------------------------------ steps

    def _step_fn(self, state: _State, phase: Phase, model: nn.Module):
        cfg, device = self.cfg, self.ctx.device
        teacher = state.teacher
        if phase.kind == "regress":
            segments = self._segments(state, phase)
            ends = {name for s in segments for name in (s.first, s.last)}

            def regress(x, y):
                io_pairs = capture_block_io(teacher, x, ends)
                with autocast(device, cfg.amp):
                    outputs = model({s.first: io_pairs[s.first][0] for s in segments})
                targets = {
                    s.first: align_target(s, outputs[s.first], io_pairs[s.last][1])
                    for s in segments
                }
                return regression_loss(outputs, targets)

            return regress
        kd = cfg.schedule.kd_weight if phase.kind == "finetune" else 0.0
        smoothing = cfg.teacher.train.label_smoothing if phase.kind == "teacher" else 0.0

        def classify(x, y):
            teacher_logits = None
            if kd > 0:
                with torch.no_grad(), autocast(device, cfg.amp):
                    teacher_logits = teacher(x)
            with autocast(device, cfg.amp):
                logits = model(x)
            return task_loss(logits, y, teacher_logits, kd, cfg.schedule.kd_temperature, smoothing)

        return classify

    def _save(self, state: _State) -> None:
        if not self.ctx.is_main:
            return
        record = _state_record(state)
        record["config"] = config_to_yaml(self.cfg)
        ckpt.save_checkpoint(self.out, record)

    def _run_phase(self, state: _State, phase: Phase) -> bool:
        """Trains ``phase`` from ``state.step``; returns False when stopped by the debug hook.

        Sets ``self.phase_seconds`` (training wall time of this call) and ``self.phase_steps``.
        """
        cfg, ctx = self.cfg, self.ctx
        started, first_step = time.perf_counter(), state.step
        if phase.kind != "teacher":
            self._swap_in(state, phase.blocks)
        state.teacher.eval()
        for p in state.teacher.parameters():
            p.requires_grad_(phase.kind == "teacher")
        module, groups = self._trainable(state, phase)
        if not groups:  # e.g. a stage of blocks a rule left without parameters: nothing to learn
            self.log.write("skip", phase=phase.name, reason="no parameters to train")
            state.step = phase.steps
            self.phase_seconds, self.phase_steps = time.perf_counter() - started, 0
            return True
        optimizer, scheduler = self._optimizer(phase, groups)
        if state.step > 0 and state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
            scheduler.load_state_dict(state.scheduler)
        module.train()
        model = DistributedDataParallel(module) if ctx.enabled else module
        step_fn = self._step_fn(state, phase, model)
        phase_index = state.phase_index
        while state.step < phase.steps:
            epoch, offset = divmod(state.step, self.steps_per_epoch)
            self.sampler.set_epoch(phase_index * 100_003 + epoch)
            # Worker seeds depend on (seed, phase, epoch) only, never on how often we restarted.
            self.train_loader.generator.manual_seed(
                self.cfg.seed * 1_000_003 + phase_index * 100_003 + epoch
            )
            self.sampler.start = offset * cfg.batch_size
            todo = min(self.steps_per_epoch - offset, phase.steps - state.step)
            bar = tqdm(
                total=todo,
                desc=f"{phase.name} ep{epoch}",
                disable=not ctx.is_main,
                leave=False,
                dynamic_ncols=True,
            )
            for x, y in self.train_loader:
                x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss = step_fn(x, y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"{phase.name} step {state.step + 1}: the loss is {loss.item()}; lower lr "
                        f"(now {optimizer.param_groups[0]['lr']:.3g}) or new_layer_lr_mult"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                state.step += 1
                self.steps_run += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if state.step % cfg.log_interval == 0 or state.step == phase.steps:
                    self.log.write(
                        "train",
                        phase=phase.name,
                        stage=phase.stage,
                        step=state.step,
                        loss=loss.item(),
                        lr=optimizer.param_groups[0]["lr"],
                    )
                interval = cfg.checkpoint_interval
                if interval and state.step % interval == 0 and state.step < phase.steps:
                    state.optimizer, state.scheduler = (
                        optimizer.state_dict(),
                        scheduler.state_dict(),
                    )
                    self._save(state)
                if cfg.debug.stop_after_steps and self.steps_run >= cfg.debug.stop_after_steps:
                    bar.close()
                    return False
                if state.step >= phase.steps or state.step % self.steps_per_epoch == 0:
                    break
            bar.close()
        for p in module.parameters():
            p.requires_grad_(True)
        self.phase_seconds = time.perf_counter() - started
        self.phase_steps = state.step - first_step
        return True

    def _evaluate(self, state: _State, model: nn.Module, label: str, phase: Phase | None) -> None:
        metrics = evaluate(model, self.val_loader, self.ctx, self.cfg.amp, self.cfg.channels_last)
        timing = {"train_s": None, "ms_per_step": None}  # same CSV columns for every record
        if phase is not None:
            seconds, steps = self.phase_seconds, max(1, self.phase_steps)
            timing = {"train_s": round(seconds, 2), "ms_per_step": round(1e3 * seconds / steps, 1)}
        record = {
            "label": label,
            "stage": phase.stage if phase else 0,
            "blocks": "+".join(phase.blocks) if phase else "",
            **metrics,
            **timing,
        }
        state.history.append(record)
        self.log.write("eval", **record)
        if self.ctx.is_main:
            tqdm.write(
                f"[eval] {label:<32} top-1 {metrics['top1']:6.2f}%  top-5 {metrics['top5']:6.2f}%"
            )

    # ------------------------------------------------------------------ whole run

    def run(self, state: _State, student: StudentSpec) -> JobResult:
        """Runs every phase from ``state`` on; the global RNG must already be set."""
        cfg = self.cfg
        state.teacher.to(self.ctx.device)
        if state.working is not None:
            state.working.to(self.ctx.device)
            state.pending.to(self.ctx.device)
        if cfg.channels_last:
            state.teacher.to(memory_format=torch.channels_last)
        while True:
            phases = _phases(state, cfg, self.steps_per_epoch)
            if state.working is None and (
                state.phase_index >= len(phases) or phases[state.phase_index].kind != "teacher"
            ):
                if not state.teacher_phase and not any(
                    h["label"] == "teacher" for h in state.history
                ):
                    self._evaluate(state, state.teacher, "teacher", None)
                built, names = _make_student(state.teacher, cfg, student)
                _init_working(state, built.to(self.ctx.device), names, cfg)
                self._log_alignment(state)
                if cfg.channels_last:
                    state.working.to(memory_format=torch.channels_last)
                    state.pending.to(memory_format=torch.channels_last)
                full = copy.deepcopy(state.working)
                for name, block in state.pending.items():
                    setattr(full, name, copy.deepcopy(block))
                self._evaluate(state, full, "student, before training", None)
                continue
            if state.phase_index >= len(phases):
                break
            phase = phases[state.phase_index]
            if not self._run_phase(state, phase):
                return JobResult(
                    state.working,
                    state.teacher,
                    state.history,
                    state.stages or [],
                    self.out,
                    stopped=True,
                )
            if phase.kind == "teacher":
                self._evaluate(state, state.teacher, "teacher", phase)
                self._save_teacher(state)
            elif phase.kind == "finetune" or cfg.schedule.eval_after_regression:
                self._evaluate(state, state.working, phase.name, phase)
            state.phase_index, state.step = state.phase_index + 1, 0
            state.optimizer = state.scheduler = None
            self._save(state)
        return self._finish(state)

    def _log_alignment(self, state: _State) -> None:
        """Says, per changed block, what its regression compares (metrics ``alignment``)."""
        for record in state.segments or []:
            segment = Segment.from_dict(record)
            self.log.write(
                "alignment",
                blocks="+".join(segment.changed),
                how=segment.how,
                target=segment.last,
                note=segment.note,
            )
            if self.ctx.is_main:
                tqdm.write(f"[align] {segment.how:<8} {segment.note}")

    def _save_teacher(self, state: _State) -> None:
        """Writes the trained teacher (``teacher.pt``) as soon as stage 0 ends, so later runs can
        start from it with ``teacher.weights=.../teacher.pt``."""
        if self.ctx.is_main:
            teacher_cpu = copy.deepcopy(state.teacher).cpu()
            io.save_model(
                self.out / "teacher.pt", teacher_cpu, self._model_metadata(teacher_cpu, None)
            )

    def _model_metadata(
        self, teacher: nn.Module, stages: list[list[str]] | None, student: nn.Module | None = None
    ) -> dict[str, Any]:
        """The metadata record saved with ``teacher.pt`` / ``student.pt`` (``student`` given:
        also the surgery rules that made it): the input in the form ``deeprebirth slim`` writes
        and ``deeprebirth export`` reads, the data's per-channel ``mean`` / ``std`` (so that an
        export normalises as training did); ``source`` is the teacher's model name."""
        cfg = self.cfg
        source = (get_recipe(teacher) or {}).get("source", {}).get("name", cfg.model.name)
        metadata = {
            "source": source,
            "input_size": [cfg.model.input_size, cfg.model.input_size],
            "in_channels": cfg.model.in_channels,
            "classes": self.data.classes,
            "stages": stages,
        }
        normalization = input_normalization(cfg)
        if normalization is not None:
            metadata["mean"], metadata["std"] = normalization
        if student is not None:
            steps = (get_recipe(student) or {}).get("steps", [])
            metadata["rules"] = [
                r for step in steps if step["kind"] == "slim" for r in step["rules"]
            ]
        return metadata

    def _finish(self, state: _State) -> JobResult:
        cfg = self.cfg
        student = state.working
        speed: dict[str, dict[str, float]] = {}
        if self.ctx.is_main:
            shape = (1, cfg.model.in_channels, cfg.model.input_size, cfg.model.input_size)
            teacher_cpu, student_cpu = (
                copy.deepcopy(state.teacher).cpu(),
                copy.deepcopy(student).cpu(),
            )
            if cfg.latency_repeats:
                speed = measure_speed(
                    {"teacher": teacher_cpu, "student": student_cpu}, shape, cfg.latency_repeats
                )
            io.save_model(
                self.out / "student.pt",
                student_cpu,
                self._model_metadata(teacher_cpu, state.stages, student_cpu),
            )
            io.save_model(
                self.out / "teacher.pt", teacher_cpu, self._model_metadata(teacher_cpu, None)
            )
            if cfg.quantize.enabled:  # int8 student (and teacher): files and history rows
                models = {
                    "student": (student_cpu, self._model_metadata(teacher_cpu, None, student_cpu)),
                    "teacher": (teacher_cpu, self._model_metadata(teacher_cpu, None)),
                }
                state.history += run_quantize_stage(cfg, models, self.data, self.out, self.log)
            summary = {
                "model": f"{cfg.model.name} width {cfg.model.width}, input {cfg.model.input_size}",
                "data": cfg.data.name,
                "mode": cfg.schedule.mode,
                "surgery init": cfg.surgery.init,
                "new-layer LR multiplier": cfg.new_layer_lr_mult,
                "stages": state.stages,
                "regression targets": ", ".join(
                    f"{'+'.join(r['changed'])}: {r['how']} ({r['blocks'][-1]})"
                    for r in state.segments or []
                ),
                "unreadable images skipped": len(self.data.skipped),
                "processes": self.ctx.world_size,
            }
            write_report(self.out, state.history, speed, summary)
        self.log.close()
        barrier(self.ctx)
        return JobResult(
            student, state.teacher, state.history, state.stages or [], self.out, speed=speed
        )


def _check_stage_names(cfg, teacher: nn.Module) -> None:
    """``schedule.stages`` may only name the teacher's top-level blocks (checked before training)."""
    blocks = [name for name, _ in teacher.named_children()]
    for group in cfg.schedule.stages or []:
        for name in group:
            if name not in blocks:
                raise ConfigError(
                    f"schedule.stages names {name!r}, expected one of the model's blocks {blocks}"
                )


def run_job(cfg, student: StudentSpec = None, resume: bool | None = None) -> JobResult:
    """Runs (or resumes) the finetune job described by ``cfg`` (see ``deeprebirth.train.config``).

    Args:
        cfg: a config from :func:`deeprebirth.train.config.load_config`.
        student: None to build the student with ``deeprebirth.slim`` (``cfg.surgery``); an
            ``nn.Module`` (its changed blocks' parameters are all "new"); or a callable
            ``teacher -> (student, new_parameter_names)`` called after teacher training.
        resume: continue from ``cfg.output_dir/checkpoint.pt`` (default ``cfg.resume``).

    Raises:
        ConfigError / DataError: bad configuration or data, before any training.

    The job's process-wide settings (``threads``, ``onednn``, ``deterministic``) hold while it
    runs and are put back when it returns or raises.
    """
    ctx = init_distributed(cfg.device)
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.backends.mkldnn.enabled = cfg.onednn
        seed_everything(cfg.seed, cfg.deterministic)
        if student is None:
            check_surgery_rules(cfg)
        resuming = cfg.resume if resume is None else resume
        _check_ranks_agree(cfg, ctx)
        record = _check_output_dir(cfg, resuming)
        data = build_datasets(cfg)  # validates roots before anything trains
        if record is not None:
            state = _state_from_record(record, cfg, student)
            ckpt.set_rng_state(record["rng"])  # nothing below draws before the next training step
        else:
            teacher, trained = load_teacher(cfg)
            _check_stage_names(cfg, teacher)
            state = _State(teacher=teacher, teacher_phase=not trained and cfg.teacher.train.enabled)
        barrier(ctx)  # every rank has checked output_dir before the main rank writes to it
        if record is None and ctx.is_main:
            out = Path(cfg.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            _clear_run_files(out)
            (out / "config.yaml").write_text(config_to_yaml(cfg))
        barrier(ctx)
        job = _Job(cfg, ctx, data)
        return job.run(state, student)
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        shutdown(ctx)
