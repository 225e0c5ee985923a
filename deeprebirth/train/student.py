"""Building the teacher and the student: the job's only dependency on the surgery API.

:func:`build_student` calls ``deeprebirth.slim`` (the surgery issue). Tests and callers with a
hand-made student skip it by passing ``student=`` to :func:`deeprebirth.train.job.run_job`.
"""

from __future__ import annotations

from torch import nn

import deeprebirth
from deeprebirth import io


def model_from_config(cfg) -> nn.Module:
    """The architecture named by ``cfg.model`` (random weights), e.g. a width-0.25 bvlc_googlenet,
    built by :func:`deeprebirth.models.build_model` (so it carries its rebuild recipe).

    Raises:
        ConfigError: ``cfg.model.name`` is not a model ``build_model`` knows.
    """
    from deeprebirth.train.config import ConfigError

    m = cfg.model
    kwargs = {}
    if m.name == "bvlc_googlenet":
        kwargs = {"width": m.width, "lrn": m.lrn, "in_channels": m.in_channels, "init": m.init}
    try:
        return deeprebirth.models.build_model(m.name, num_classes=m.num_classes, **kwargs)
    except ValueError as error:
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
        return model_from_config(cfg), False
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
    unknown = [rule for rule in cfg.surgery.rules if rule not in known_rules()]
    if unknown:
        raise ConfigError(
            f"surgery.rules: unknown rule(s) {unknown}; known rules: {', '.join(known_rules())}"
        )


def build_student(teacher: nn.Module, cfg) -> tuple[nn.Module, list[str] | None]:
    """The student and the names of its new parameters (None: every parameter of a changed block).

    ``cfg.surgery.student`` set: that model file (its metadata's ``new_parameters`` if any).
    Otherwise ``deeprebirth.slim(teacher, cfg.surgery.rules, init=cfg.surgery.init)``, whose new
    parameters (``deeprebirth.surgery.new_parameters``) train at ``new_layer_lr_mult`` x LR.
    """
    if cfg.surgery.student:
        student, metadata = _load_model_file("surgery.student", cfg.surgery.student, cfg)
        return student, metadata.get("new_parameters")
    size = cfg.model.input_size
    example_shape = (1, cfg.model.in_channels, size, size)  # streamline sizes paddings for it
    student, _report = deeprebirth.slim(
        teacher, list(cfg.surgery.rules), example_shape, init=cfg.surgery.init
    )
    return student, list(deeprebirth.surgery.new_parameters(student))
