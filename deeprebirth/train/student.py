"""Building the teacher and the student: the job's only dependency on the surgery API.

:func:`build_student` calls ``deeprebirth.slim`` (the surgery issue). Tests and callers with a
hand-made student skip it by passing ``student=`` to :func:`deeprebirth.train.job.run_job`.

``model.name`` is a model name :func:`deeprebirth.models.build_model` knows (``bvlc_googlenet``,
``torchvision:<name>``, ``timm:<name>``, a registered name) or a deeprebirth model file
(:mod:`deeprebirth.io`; :func:`model_file_source`):

- a file written by ``deeprebirth slim`` (its recipe has surgery steps): the teacher is the model
  the file was made from (built anew, with the weights ``slim --weights`` named if any, else
  trained as stage 0) and the student is made by replaying the file's surgery steps on that
  teacher, so that the student inherits the trained teacher's weights — the file decides the
  rules, ``surgery.rules`` is not used;
- any other model file (``teacher.pt``, a saved ``build_model``): the teacher itself, with its
  weights (trained: no stage 0), slimmed with ``surgery.rules``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

import deeprebirth
from deeprebirth import io


@dataclass
class ModelFileSource:
    """What a model file given as ``model.name`` says: its rebuild recipe's source model, its
    surgery steps and the input it was made for."""

    path: str
    name: str  # the source model (build_model name)
    num_classes: int
    kwargs: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    weights: str | None = None  # ``slim --weights``
    in_channels: int | None = None
    input_size: list[int] | None = None  # [H, W]

    @property
    def rules(self) -> list[str]:
        """Every rule the file's surgery steps applied, in order."""
        return [rule for step in self.steps if step["kind"] == "slim" for rule in step["rules"]]


def is_model_file_name(name: str) -> bool:
    """Whether ``model.name`` names a file rather than a model: an existing file, or a name that
    looks like a path (a folder separator, or ``.pt`` / ``.pth``)."""
    return os.sep in name or name.endswith((".pt", ".pth")) or Path(name).is_file()


def model_file_source(cfg) -> ModelFileSource | None:
    """The source of ``cfg.model.name`` when it names a model file, else None.

    Raises:
        ConfigError: the file is missing, pickled (without ``trust_pickle``), not a deeprebirth
            model file, or has no rebuild recipe.
    """
    from deeprebirth.train.config import ConfigError

    path = cfg.model.name
    if not is_model_file_name(path):
        return None
    try:
        record = io.read_model_record(path, cfg.trust_pickle)
        channels, size = io.stored_input_geometry(dict(record.get("metadata") or {}))
    except io.UntrustedFileError as error:
        raise ConfigError(f"model.name: {error} (config: trust_pickle=true)") from error
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"model.name: {error}") from error
    recipe, metadata = record.get("recipe"), dict(record.get("metadata") or {})
    if recipe is None:
        raise ConfigError(
            f"model.name: {path} has no rebuild recipe (a model built by hand); give the job its "
            "architecture by name and its weights with model.weights"
        )
    source = recipe["source"]
    kwargs = dict(source.get("kwargs") or {})
    return ModelFileSource(
        path=path,
        name=source["name"],
        num_classes=int(source.get("num_classes", 1000)),
        kwargs=kwargs,
        steps=list(recipe.get("steps") or []),
        weights=metadata.get("weights") if recipe.get("steps") else None,
        in_channels=channels or kwargs.get("in_channels", kwargs.get("in_chans")),
        input_size=size,
    )


def model_kwargs(cfg) -> dict[str, Any]:
    """The ``build_model`` arguments of ``cfg.model`` besides name and classes: bvlc_googlenet's
    options, else ``in_channels`` when it is not 3 (torchvision and timm models take it)."""
    m = cfg.model
    if m.name == "bvlc_googlenet":
        return {"width": m.width, "lrn": m.lrn, "in_channels": m.in_channels, "init": m.init}
    return {"in_channels": m.in_channels} if m.in_channels != 3 else {}


def model_from_config(cfg) -> nn.Module:
    """The architecture named by ``cfg.model`` (random weights), e.g. a width-0.25 bvlc_googlenet,
    built by :func:`deeprebirth.models.build_model` (so it carries its rebuild recipe). For a
    model file: the model it was made from (a slimmed file), or the file's model with its
    weights (any other file).

    Raises:
        ConfigError: ``cfg.model.name`` is not a model ``build_model`` knows, or a model file
            that cannot be read.
    """
    from deeprebirth.train.config import ConfigError

    source = model_file_source(cfg)
    if source is not None and not source.steps:
        return _load_model_file("model.name", source.path, cfg)[0]
    try:
        if source is not None:
            return deeprebirth.models.build_model(
                source.name, num_classes=source.num_classes, weights=source.weights, **source.kwargs
            )
        return deeprebirth.models.build_model(
            cfg.model.name, num_classes=cfg.model.num_classes, **model_kwargs(cfg)
        )
    except (ValueError, TypeError, FileNotFoundError) as error:
        raise ConfigError(f"model.name: {error}") from error


def _load_model_file(key: str, path: str, cfg) -> tuple[nn.Module, dict]:
    """``io.load_model`` with errors that name the config key."""
    from deeprebirth.train.config import ConfigError

    try:
        return io.load_model(path, trust_pickle=cfg.trust_pickle)
    except io.UntrustedFileError as error:
        raise ConfigError(f"{key}: {error} (config: trust_pickle=true)") from error
    except FileNotFoundError as error:
        raise ConfigError(f"{key}: {error}") from error


def load_teacher(cfg) -> tuple[nn.Module, bool]:
    """The teacher and whether it is trained: from ``teacher.weights`` / ``model.weights`` or new.

    A weights file is a deeprebirth model file (``deeprebirth.io.save_model``) or a state_dict of
    ``model_from_config(cfg)``; neither is unpickled beyond tensors and plain data unless
    ``trust_pickle``.

    Raises:
        ConfigError: the file is missing, pickled (without ``trust_pickle``) or not loadable.
    """
    from deeprebirth.train.config import ConfigError

    key = "teacher.weights" if cfg.teacher.weights else "model.weights"
    path = cfg.teacher.weights or cfg.model.weights
    if not path:
        source = model_file_source(cfg)
        # A model file's own weights, or the weights `slim --weights` started from, are trained.
        trained = source is not None and (not source.steps or source.weights is not None)
        return model_from_config(cfg), trained
    record = None
    try:
        record = io.safe_load(path, "weights file", cfg.trust_pickle)
    except (FileNotFoundError, ValueError) as error:
        hint = " (config: trust_pickle=true)" if isinstance(error, io.UntrustedFileError) else ""
        raise ConfigError(f"{key}: {error}{hint}") from error
    if isinstance(record, dict) and record.get("format") == io.MODEL_FORMAT:
        return _load_model_file(key, path, cfg)[0], True
    if isinstance(record, dict) and isinstance(record.get("state_dict"), dict):
        record = record["state_dict"]
    model = model_from_config(cfg)
    try:
        model.load_state_dict(record)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"{key}: {path} is neither a deeprebirth model file nor a state_dict of "
            f"{cfg.model.name}: {error}"
        ) from error
    return model, True


def check_surgery_rules(cfg) -> None:
    """Fails before any training when ``surgery.rules`` names a rule the surgery API lacks.

    Raises:
        ConfigError: an unknown rule; the message lists the known ones.
    """
    from deeprebirth.surgery.registry import known_rules
    from deeprebirth.train.config import ConfigError

    if cfg.surgery.student:
        return
    source = model_file_source(cfg)
    if source is not None and source.steps:  # the file's own surgery steps are replayed
        return
    unknown = [rule for rule in cfg.surgery.rules if rule not in known_rules()]
    if unknown:
        raise ConfigError(
            f"surgery.rules: unknown rule(s) {unknown}; known rules: {', '.join(known_rules())}"
        )


def build_student(teacher: nn.Module, cfg) -> tuple[nn.Module, list[str] | None]:
    """The student and the names of its new parameters (None: every parameter of a changed block).

    ``cfg.surgery.student`` set: that model file (its metadata's ``new_parameters`` if any).
    ``model.name`` a file written by ``deeprebirth slim``: its surgery steps replayed on
    ``teacher``. Otherwise ``deeprebirth.slim(teacher, cfg.surgery.rules, init=cfg.surgery.init)``.
    New parameters (``deeprebirth.surgery.new_parameters``) train at ``new_layer_lr_mult`` x LR.
    """
    if cfg.surgery.student:
        student, metadata = _load_model_file("surgery.student", cfg.surgery.student, cfg)
        return student, metadata.get("new_parameters")
    source = model_file_source(cfg)
    if source is not None and source.steps:
        student = teacher
        for step in source.steps:
            if step["kind"] == "flatten":
                student = deeprebirth.surgery.flatten_for_inference(student.eval())
                continue
            shape = tuple(int(s) for s in step["input_shape"])
            student, _report = deeprebirth.slim(
                student, list(step["rules"]), shape, **dict(step["options"])
            )
        return student, list(deeprebirth.surgery.new_parameters(student))
    size = cfg.model.input_size
    example_shape = (1, cfg.model.in_channels, size, size)  # streamline sizes paddings for it
    student, _report = deeprebirth.slim(
        teacher, list(cfg.surgery.rules), example_shape, init=cfg.surgery.init
    )
    return student, list(deeprebirth.surgery.new_parameters(student))
