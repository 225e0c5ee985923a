"""Hand-built students for the finetune tests (no dependency on the surgery API).

``tiny_student(teacher)`` mimics what streamline + branch slimming produce on bvlc_googlenet:
conv1 (conv 7x7/2 -> ReLU -> max-pool 3/2 -> LRN) becomes one 7x7/4 conv + ReLU, and
inception_3a loses its 1x1 and pool-projection branches, whose channels go to 3x3 and 5x5.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn

from deeprebirth.models import Inception


def tiny_student(teacher: nn.Module) -> tuple[nn.Module, list[str]]:
    """The slimmed copy of a bvlc_googlenet ``teacher`` and the names of its new parameters."""
    student = copy.deepcopy(teacher)
    conv = teacher.conv1.conv
    student.conv1 = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(conv.in_channels, conv.out_channels, 7, stride=4, padding=3),
            relu=nn.ReLU(inplace=True),
        )
    )
    c1, r3, c3, r5, c5, pp = teacher.inception_3a.widths
    in_ch = teacher.inception_3a.conv_3x3_reduce.in_channels
    student.inception_3a = Inception(in_ch, 0, r3, c3 + c1, r5, c5 + pp, 0)
    for module in (student.conv1, student.inception_3a):
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
    new = [n for n, _ in student.named_parameters() if n.startswith(("conv1.", "inception_3a."))]
    return student, new


TINY_OVERRIDES = [
    "model.width=0.125",
    "model.input_size=32",
    "model.num_classes=4",
    "model.lrn=true",
    "data.name=synthetic",
    "data.synthetic_train_size=32",
    "data.synthetic_val_size=16",
    "batch_size=8",
    "schedule.regression_steps=3",
    "schedule.finetune_steps=3",
    "teacher.train.enabled=false",
    "latency_repeats=0",
    "tensorboard=false",
    "deterministic=true",
    "log_interval=1",
    "lr=0.005",
    "onednn=false",
    "threads=1",
]


def tiny_config(output_dir, *overrides: str):
    """A config of a seconds-long job on synthetic 32x32 data writing to ``output_dir``."""
    from deeprebirth.train.config import load_config

    return load_config(None, [*TINY_OVERRIDES, f"output_dir={output_dir}", *overrides])
