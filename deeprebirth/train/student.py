"""Building the teacher and the student: the job's only dependency on the surgery API.

:func:`build_student` calls ``deeprebirth.slim`` (the surgery issue). Tests and callers with a
hand-made student skip it by passing ``student=`` to :func:`deeprebirth.train.job.run_job`.
"""

from __future__ import annotations

from torch import nn

import deeprebirth
from deeprebirth import io


def build_model(cfg) -> nn.Module:
    """The architecture named by ``cfg.model`` (random weights), e.g. a width-0.25 bvlc_googlenet.

    Raises:
        ValueError: ``cfg.model.name`` is not a model of ``deeprebirth.models``.
    """
    factory = getattr(deeprebirth.models, cfg.model.name, None)
    if factory is None or not callable(factory):
        raise ValueError(
            f"model.name: expected a model of deeprebirth.models (e.g. bvlc_googlenet), but got {cfg.model.name!r}"
        )
    m = cfg.model
    return factory(
        num_classes=m.num_classes, width=m.width, lrn=m.lrn, in_channels=m.in_channels, init=m.init
    )


def load_teacher(cfg) -> tuple[nn.Module, bool]:
    """The teacher and whether it is trained: from ``teacher.weights`` / ``model.weights`` or new.

    A weights file is a deeprebirth model file (``deeprebirth.io.save_model``) or a state_dict of
    ``build_model(cfg)``.
    """
    path = cfg.teacher.weights or cfg.model.weights
    if not path:
        return build_model(cfg), False
    try:
        return io.load_model(path)[0], True
    except ValueError:
        import torch

        model = build_model(cfg)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
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
        student, metadata = io.load_model(cfg.surgery.student)
        return student, metadata.get("new_parameters")
    size = cfg.model.input_size
    example_shape = (1, cfg.model.in_channels, size, size)  # streamline sizes paddings for it
    student, _report = deeprebirth.slim(
        teacher, list(cfg.surgery.rules), example_shape, init=cfg.surgery.init
    )
    return student, list(deeprebirth.surgery.new_parameters(student))
