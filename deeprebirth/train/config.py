"""The finetune job's configuration: a typed schema (dataclasses) loaded through OmegaConf.

:func:`load_config` merges a YAML file and ``key=value`` overrides into the schema and fails with
:class:`ConfigError` naming the key and the expected type on an unknown key or a wrong type, then
checks value ranges and choices, that ``output_dir`` can be a folder, that the device exists and
that the model takes ``model.input_size`` (built on the meta device: no memory, no weights), all
before any data is read or any training starts.

Example:
    >>> cfg = load_config(None, ["data.name=synthetic", "lr=0.05"])
    >>> cfg.lr, cfg.new_layer_lr_mult
    (0.05, 10.0)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from deeprebirth.train.config_files import resolve_config_path
from deeprebirth.train.quantize_stage import QuantizeConfig, check_quantize_config


class ConfigError(ValueError):
    """A configuration problem: the message names the key, what was expected and what was found."""


@dataclass
class ModelConfig:
    """The network: a model name from ``deeprebirth.models`` (``bvlc_googlenet``,
    ``torchvision:<name>``, ``timm:<name>``), or a deeprebirth model file (``deeprebirth slim
    --out``; see :mod:`deeprebirth.train.student`), whose classes, channels and square input size
    fill ``num_classes``, ``in_channels`` and ``input_size`` left at their defaults."""

    name: str = "bvlc_googlenet"
    weights: str | None = None  # deeprebirth model file (deeprebirth.io.save_model) or state_dict
    width: float = 1.0
    input_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    lrn: bool = True
    init: str = "caffe"  # caffe (bvlc_googlenet's own) | kaiming (trains from scratch faster)


@dataclass
class TeacherTrainConfig:
    """Stage 0: train the teacher first when no teacher weights are given."""

    enabled: bool = True  # train the teacher when teacher.weights is unset
    epochs: int = 0
    steps: int = 0  # used when epochs == 0
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    label_smoothing: float = 0.0


@dataclass
class TeacherConfig:
    """The original model; ``weights`` unset means "build ``model`` and train it as stage 0"."""

    weights: str | None = None
    train: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)


@dataclass
class DataConfig:
    """Where batches come from: ``imagenet`` (ImageFolder), ``fashion_mnist`` or ``synthetic``."""

    name: str = "synthetic"
    root: str | None = None  # imagenet: folder with train/ and val/; fashion_mnist: IDX .gz folder
    train_split: str = "train"
    val_split: str = "val"
    augment: bool = True
    fit: str = "resize"  # fashion_mnist: resize (bilinear) or pad (zero border) to model.input_size
    max_corrupt_fraction: float = 0.001  # unreadable images tolerated (skipped + counted)
    verify_limit: int = 0  # images per split opened during validation (0: all)
    train_limit: int = 0  # use only the first N training samples (0: all)
    val_limit: int = 0
    synthetic_train_size: int = 256
    synthetic_val_size: int = 64


@dataclass
class SurgeryConfig:
    """What ``deeprebirth.slim`` does to the teacher to make the student."""

    rules: list[str] = field(default_factory=lambda: ["streamline", "branch_slim"])
    init: str = "xavier"  # xavier | inherit
    student: str | None = None  # an already slimmed model file (deeprebirth.io) instead of slim()


@dataclass
class ScheduleConfig:
    """Stage order and length. ``stages`` groups blocks, e.g. ``[[conv1, conv2], [inception_3a]]``."""

    mode: str = "layerwise"  # layerwise | all_at_once
    stages: list[list[str]] | None = None  # None: one stage per changed block, bottom to top
    regression_steps: int = 100
    finetune_epochs: int = 0
    finetune_steps: int = 100  # used when finetune_epochs == 0
    final_finetune_epochs: int = 0  # after the last stage: the whole student, task loss (+KD)
    final_finetune_steps: int = 0  # used when final_finetune_epochs == 0
    freeze_old: bool = False  # True: only new parameters train in finetune phases
    kd_weight: float = 0.0  # 0 disables knowledge distillation
    kd_temperature: float = 4.0
    eval_after_regression: bool = True


@dataclass
class OptimizerConfig:
    """Optimizer of the regression and finetune phases."""

    name: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class LRScheduleConfig:
    """Per-phase learning-rate schedule over the phase's steps."""

    name: str = "cosine"  # cosine | step | constant
    warmup_steps: int = 0
    step_size: int = 1000
    gamma: float = 0.1


@dataclass
class DebugConfig:
    """Test hooks."""

    stop_after_steps: int = 0  # simulate a kill after this many training steps (0: off)


@dataclass
class FinetuneConfig:
    """The whole job (see ``configs/*.yaml``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    surgery: SurgeryConfig = field(default_factory=SurgeryConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)  # int8 after finetuning
    lr: float = 0.01
    new_layer_lr_mult: float = 10.0
    batch_size: int = 64
    eval_batch_size: int = 0  # 0: batch_size
    workers: int = 0
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    deterministic: bool = False
    output_dir: str = "runs/finetune"
    checkpoint_interval: int = 0  # steps between checkpoints (0: only at phase ends)
    resume: bool = False
    overwrite: bool = False  # allow a new run into a non-empty output_dir (replaces its files)
    trust_pickle: bool = False  # read pickled (pre-2) model files and checkpoints: runs their code
    log_interval: int = 10
    tensorboard: bool = True  # used when tensorboard is installed
    latency_repeats: int = 20
    threads: int = 0  # torch threads (0: leave as is)
    onednn: bool = True  # False: plain ATen convs on CPU (tiny models: no per-shape kernel JIT)


_CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("imagenet", "fashion_mnist", "synthetic"),
    "model.init": ("caffe", "kaiming"),
    "surgery.init": ("xavier", "inherit"),
    "data.fit": ("resize", "pad"),
    "schedule.mode": ("layerwise", "all_at_once"),
    "optimizer.name": ("sgd", "adamw"),
    "teacher.train.optimizer": ("sgd", "adamw"),
    "lr_schedule.name": ("cosine", "step", "constant"),
    "teacher.train.lr_schedule": ("cosine", "step", "constant"),
    "device": ("auto", "cpu", "cuda"),
}
_POSITIVE = (
    "lr",
    "teacher.train.lr",
    "batch_size",
    "log_interval",
    "model.input_size",
    "model.in_channels",
    "model.num_classes",
    "model.width",
    "schedule.kd_temperature",
    "lr_schedule.step_size",
    "lr_schedule.gamma",
    "data.synthetic_train_size",
    "data.synthetic_val_size",
)
_NON_NEGATIVE = (
    "new_layer_lr_mult",
    "workers",
    "threads",
    "checkpoint_interval",
    "latency_repeats",
    "schedule.regression_steps",
    "schedule.finetune_epochs",
    "schedule.finetune_steps",
    "schedule.final_finetune_epochs",
    "schedule.final_finetune_steps",
    "schedule.kd_weight",
    "optimizer.weight_decay",
    "lr_schedule.warmup_steps",
    "teacher.train.epochs",
    "teacher.train.steps",
    "teacher.train.warmup_steps",
    "teacher.train.weight_decay",
    "eval_batch_size",
    "data.verify_limit",
    "data.train_limit",
    "data.val_limit",
    "debug.stop_after_steps",
)
# Closed-open [low, high) ranges: SGD momentum >= 1 never forgets a gradient (the steps grow
# without bound); numpy seeds are 32-bit.
_BELOW = {
    "optimizer.momentum": (0.0, 1.0),
    "teacher.train.momentum": (0.0, 1.0),
    "seed": (0, 2**32),
}
# Closed [low, high] ranges (fractions).
_WITHIN = {
    "data.max_corrupt_fraction": (0.0, 1.0),
    "teacher.train.label_smoothing": (0.0, 1.0),
}
_MAX_PROBED_INPUT = 4096  # model.input_size: the largest size tried for the "smallest accepted"


def _expected_type(key: str) -> str:
    """The annotation of dotted ``key`` in the schema, as text (for error messages)."""
    node: Any = FinetuneConfig
    annotation: Any = None
    for part in key.split("."):
        fields = getattr(node, "__dataclass_fields__", {})
        if part not in fields:
            return "a key of the schema"
        annotation = fields[part].type
        default = fields[part].default_factory if callable(fields[part].default_factory) else None
        node = type(default()) if default is not None else None
    return str(annotation)


def _config_error(error: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(error, "full_key", None)
    if not isinstance(key, str) or not key:  # list items report only their index
        key = f"list item {key}" if isinstance(key, int) else "?"
    if isinstance(error, ConfigKeyError) and not isinstance(error, ValidationError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        allowed = _allowed_keys(parent)
        return ConfigError(f"{source}: unknown config key '{key}' (allowed here: {allowed})")
    value = getattr(error, "msg", str(error)).split("\n")[0]
    return ConfigError(f"{source}: config key '{key}' expects {_expected_type(key)}: {value}")


def _allowed_keys(parent: str) -> str:
    node = OmegaConf.structured(FinetuneConfig)
    for part in [p for p in parent.split(".") if p]:
        node = node.get(part) if isinstance(node, DictConfig) and part in node else None
    return ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else "?"


def _float_keys(schema: Any = FinetuneConfig, prefix: str = "") -> list[str]:
    """The dotted keys of every float field of the schema (annotations are strings here)."""
    keys = []
    for name, spec in schema.__dataclass_fields__.items():
        if callable(spec.default_factory) and hasattr(spec.default_factory, "__dataclass_fields__"):
            keys += _float_keys(spec.default_factory, f"{prefix}{name}.")
        elif spec.type == "float":
            keys.append(prefix + name)
    return keys


def _check_ranges(cfg: DictConfig) -> None:
    for key in _float_keys():
        value = OmegaConf.select(cfg, key)
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}' expects a finite number, but got {value!r}")
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key '{key}' expects one of {choices}, but got {value!r}")
    for key in _POSITIVE:
        value = OmegaConf.select(cfg, key)
        if not value > 0:
            raise ConfigError(f"config key '{key}' expects a value > 0, but got {value!r}")
    for key in _NON_NEGATIVE:
        value = OmegaConf.select(cfg, key)
        if value < 0:
            raise ConfigError(f"config key '{key}' expects a value >= 0, but got {value!r}")
    for key, (low, high) in _BELOW.items():
        value = OmegaConf.select(cfg, key)
        if not low <= value < high:
            raise ConfigError(
                f"config key '{key}' expects a value in [{low}, {high}), but got {value!r}"
            )
    for key, (low, high) in _WITHIN.items():
        value = OmegaConf.select(cfg, key)
        if not low <= value <= high:
            raise ConfigError(
                f"config key '{key}' expects a value in [{low}, {high}], but got {value!r}"
            )


def _check_stages(cfg: DictConfig) -> None:
    """``schedule.stages``: non-empty groups, each block named once (the names themselves are
    checked against the model's blocks once it is built, still before training)."""
    stages = cfg.schedule.stages
    if not stages:
        return
    groups = [list(group) for group in stages]
    for index, group in enumerate(groups):
        if not group:
            raise ConfigError(
                f"config key 'schedule.stages' expects non-empty groups of block names, but "
                f"group {index} of {groups} is empty"
            )
    names = [name for group in groups for name in group]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(
            f"config key 'schedule.stages' expects each block once, but {repeated} appear "
            f"more than once in {groups}"
        )


def _check_output_dir(cfg: DictConfig) -> None:
    """``output_dir`` must be a folder or creatable: its nearest existing ancestor a folder."""
    path = Path(cfg.output_dir)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                raise ConfigError(
                    f"config key 'output_dir' expects a folder, but {existing} is a file"
                )
            return


def _check_device(cfg: DictConfig) -> None:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        built = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise ConfigError(
            f"config key 'device' is 'cuda', but no CUDA device is available (torch "
            f"{torch.__version__} is built {built}); use device=cpu or device=auto"
        )


def _accepts_input(model: torch.nn.Module, channels: int, size: int) -> str | None:
    """None when ``model`` (on the meta device) runs a ``(1, channels, size, size)`` input, else
    the first line of its error."""
    try:
        model(torch.empty(1, channels, size, size, device="meta"))
    except Exception as error:  # any layer may reject the shape, each with its own exception
        return str(error).split("\n")[0]
    return None


def _fill_from_model_file(cfg: DictConfig) -> bool:
    """When ``model.name`` is a model file: its classes, channels and (square) input size fill
    the ``model`` keys left at their defaults; returns whether it is one.

    Raises:
        ConfigError: an unreadable file, a key set to another value than the file's classes or
            channels (the architecture), or a non-square file without ``model.input_size``.
    """
    from deeprebirth.train.student import model_file_source

    source = model_file_source(cfg)
    if source is None:
        return False
    m, default = cfg.model, ModelConfig()
    stated = {"num_classes": source.num_classes, "in_channels": source.in_channels or 3}
    for key, value in stated.items():
        if m[key] == getattr(default, key):
            m[key] = value
        elif m[key] != value:
            raise ConfigError(
                f"config key 'model.{key}' is {m[key]}, but {source.path} was made with {value}; "
                f"leave it unset or set it to {value}"
            )
    size = source.input_size
    if size is not None and m.input_size == default.input_size:
        if size[0] != size[1]:
            raise ConfigError(
                f"config key 'model.input_size': {source.path} was made for {size[0]}x{size[1]} "
                "input and the finetune job trains on square inputs; set model.input_size"
            )
        m.input_size = size[0]
    return True


def _check_model(cfg: DictConfig) -> None:
    """``model.name`` is a known model (or a model file, whose geometry fills the defaults) and
    ``model.input_size`` goes through it.

    The model is built on the meta device (no memory, no initialisation cost) with the arguments
    the job builds it with; a model read from ``model.weights`` / ``teacher.weights`` or from a
    model file is not known before it is loaded and is not checked here.
    """
    if _fill_from_model_file(cfg):
        return
    m = cfg.model
    if m.weights or cfg.teacher.weights:
        return
    from deeprebirth.models import build_model
    from deeprebirth.train.student import model_kwargs

    try:
        with torch.device("meta"):
            model = build_model(m.name, num_classes=m.num_classes, **model_kwargs(cfg)).eval()
    except ValueError as error:  # an unknown name; the message lists the accepted forms
        raise ConfigError(f"config key 'model.name': {error}") from None
    except Exception:  # other build problems (a missing package …) are the job's to report
        return
    channels = m.in_channels
    reason = _accepts_input(model, channels, m.input_size)
    if reason is None:
        return
    low, high = m.input_size, _MAX_PROBED_INPUT
    if _accepts_input(model, channels, high) is None:
        while high - low > 1:  # smallest accepted size: pooling makes acceptance monotone
            middle = (low + high) // 2
            low, high = (
                (low, middle) if _accepts_input(model, channels, middle) is None else (middle, high)
            )
        hint = f"; the smallest square input it accepts is {high}"
    else:
        hint = ""
    raise ConfigError(
        f"config key 'model.input_size' is {m.input_size}, too small for {m.name}: a "
        f"{m.input_size}x{m.input_size} input fails ({reason}){hint}"
    )


def _check_values(cfg: DictConfig) -> None:
    _check_ranges(cfg)
    if cfg.data.name in ("imagenet", "fashion_mnist") and not cfg.data.root:
        raise ConfigError(f"config key 'data.root' expects a folder for data.name={cfg.data.name}")
    for key in ("model.weights", "teacher.weights", "surgery.student"):
        path = OmegaConf.select(cfg, key)
        if path and not Path(path).is_file():
            raise ConfigError(
                f"config key '{key}' expects an existing file, but {path} does not exist"
            )
    _check_stages(cfg)
    check_quantize_config(cfg)
    _check_output_dir(cfg)
    _check_device(cfg)
    _check_model(cfg)


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> DictConfig:
    """Reads ``path`` (a YAML file or a packaged config's name, may be None) and dotted
    ``key=value`` overrides into the schema.

    Returns a read-only, struct-mode ``DictConfig`` with the :class:`FinetuneConfig` fields.

    Raises:
        ConfigError: missing file, unknown key, wrong type or out-of-range value; the message names
            the key (and the file) and what was expected.
    """
    schema = OmegaConf.structured(FinetuneConfig)
    layers = []
    if path is not None:
        try:
            path = resolve_config_path(path)  # a file, or the name of a packaged config
        except FileNotFoundError as error:
            raise ConfigError(str(error)) from None
        try:
            layers.append((str(path), OmegaConf.load(path)))
        except Exception as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} expects the form key=value")
        layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
    cfg = schema
    for source, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as error:
            raise _config_error(error, source) from None
    _check_values(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def config_to_yaml(cfg: DictConfig) -> str:
    """The resolved configuration as YAML (written next to every run)."""
    return OmegaConf.to_yaml(cfg)
