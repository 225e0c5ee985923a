"""The finetune job's student comes from the real surgery API (deeprebirth.slim)."""

from __future__ import annotations

from pathlib import Path

import torch

from deeprebirth.models import INCEPTION_CONFIG
from deeprebirth.train.config import load_config
from deeprebirth.train.schedule import changed_blocks
from deeprebirth.train.student import build_student, model_from_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic_smoke.yaml"


def test_build_student_slims_every_block_bottom_to_top():
    cfg = load_config(CONFIG)
    teacher = model_from_config(cfg).eval()
    student, new_names = build_student(teacher, cfg)
    # streamline rewrites conv1 and conv2, branch_slim every Inception module, in network order
    assert changed_blocks(teacher, student) == ["conv1", "conv2", *INCEPTION_CONFIG]
    params = dict(student.named_parameters())
    assert new_names and all(name in params for name in new_names)
    assert any(name.startswith("conv1.") for name in new_names)
    size = cfg.model.input_size
    x = torch.randn(2, cfg.model.in_channels, size, size)
    with torch.no_grad():
        assert student(x).shape == teacher(x).shape
