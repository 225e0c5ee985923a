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
        raise ValueError(f"model.name: expected a model of deeprebirth.models (e.g. bvlc_googlenet), but got {cfg.model.name!r}")
    m = cfg.model
    return factory(num_classes=m.num_classes, width=m.width, lrn=m.lrn, in_channels=m.in_channels)


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


def build_student(teacher: nn.Module, cfg) -> tuple[nn.Module, list[str]]:
    """Slims ``teacher`` with ``cfg.surgery``; returns ``(student, names of its new parameters)``.

    The new parameters are those the surgery created (they train at ``new_layer_lr_mult`` x LR).

    Raises:
        RuntimeError: this deeprebirth has no surgery API (``deeprebirth.slim``) yet; pass a
            hand-built student to ``run_job(cfg, student=...)`` instead.
    """
    if not hasattr(deeprebirth, "slim"):
        raise RuntimeError(
            "deeprebirth.slim (the surgery API) is not available in this build; "
            "build the student yourself and call deeprebirth.train.job.run_job(cfg, student=...)"
        )
    student, _report = deeprebirth.slim(teacher, list(cfg.surgery.rules), init=cfg.surgery.init)
    new_params = deeprebirth.surgery.new_parameters(student)
    ids = {id(p) for p in new_params}
    names = [name for name, p in student.named_parameters() if id(p) in ids]
    return student, names
