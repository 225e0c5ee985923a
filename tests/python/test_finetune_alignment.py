"""Block regression where a rule changes a block's output size (``deeprebirth.train.alignment``),
and the finetune job on models other than bvlc_googlenet (torchvision, model files).

References: the unmodified teacher run block by block (its forward hooks), closed-form pooling
(``avg_pool2d`` with the exact factor), and the model file ``deeprebirth slim`` wrote.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from finetune_helpers import tiny_config
from torch import nn

import deeprebirth
from deeprebirth.models import build_model
from deeprebirth.train.alignment import SegmentStack, align_target, plan_segments
from deeprebirth.train.config import ConfigError
from deeprebirth.train.schedule import changed_blocks, group_stages

pytestmark = pytest.mark.filterwarnings("ignore:torchvision's C\\+\\+ operators")


def _block_io(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{child: (input, output)}`` of one forward of ``model``."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str, args: tuple, output: torch.Tensor) -> None:
        seen.setdefault(name, (args[0].clone(), output.clone()))

    handles = [
        child.register_forward_hook(lambda m, a, o, n=name: record(n, a, o))
        for name, child in model.named_children()
    ]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return seen


def test_streamlined_resnet_stem_regresses_through_the_absorbed_pool():
    """streamline folds conv1 + bn1 + maxpool of ResNet-18 into one stride-4 conv: the student's
    conv1 output is 4x smaller than the teacher's, so the regression runs conv1 .. maxpool and
    compares with the teacher's maxpool output, whose shape the student's chain has."""
    torch.manual_seed(0)
    teacher = build_model("torchvision:resnet18", num_classes=4)
    student, _ = deeprebirth.slim(teacher, ["streamline"], (1, 3, 48, 48))
    changed = changed_blocks(teacher, student)
    assert changed == ["conv1", "bn1", "maxpool"]
    (segment,) = plan_segments(teacher, student, changed, (1, 3, 48, 48))
    assert (segment.blocks, segment.how) == (("conv1", "bn1", "relu", "maxpool"), "extended")
    assert (
        "maxpool" in segment.note and "(64, 12, 12) != teacher output (64, 24, 24)" in segment.note
    )

    x = torch.randn(2, 3, 48, 48)
    t_io, s_io = _block_io(teacher, x), _block_io(student, x)
    stack = SegmentStack(student, [segment]).eval()
    with torch.no_grad():
        out = stack({"conv1": t_io["conv1"][0]})["conv1"]
    # The segment is the student's own stem: fed the image it gives what layer1 receives.
    torch.testing.assert_close(out, s_io["layer1"][0])
    assert out.shape == t_io["maxpool"][1].shape
    assert [n for n, _ in stack.named_parameters()] == ["blocks.conv1.weight", "blocks.conv1.bias"]
    # The three changed blocks are one unit: layer-wise stages keep them together.
    assert group_stages(changed, "layerwise", None, [list(segment.changed)]) == [changed]
    with pytest.raises(ValueError, match=r"splits \['conv1', 'bn1', 'maxpool'\]"):
        group_stages(changed, "layerwise", [["conv1"], ["bn1", "maxpool"]], [changed])


class _Stem(nn.Module):
    """conv -> (forward scales and rectifies) -> pool -> head: no plain chain between blocks."""

    def __init__(self, stride: int = 1, pool: bool = True, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=stride, padding=1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.head = nn.Conv2d(channels, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(2 * torch.relu(self.conv(x)))).mean((2, 3))


def test_pooled_alignment_where_no_plain_chain_reaches_agreement():
    """The forward does work between conv and pool, so conv -> pool run alone is not the model:
    the target is the teacher's conv output average-pooled to the student's size."""
    torch.manual_seed(0)
    teacher, student = _Stem(), _Stem(stride=2, pool=False)
    segment, identity = plan_segments(teacher, student, ["conv", "pool"], (1, 3, 16, 16))
    assert (segment.blocks, segment.changed, segment.how) == (("conv",), ("conv",), "pooled")
    assert "average-pooled to (8, 8)" in segment.note
    # The pool left as an Identity agrees again and has nothing to learn: its own (empty) unit.
    assert (identity.blocks, identity.how) == (("pool",), "output")
    target = torch.randn(2, 4, 16, 16)
    aligned = align_target(segment, torch.zeros(2, 4, 8, 8), target)
    torch.testing.assert_close(aligned, F.avg_pool2d(target, 2))  # closed form, exact factor


def test_unalignable_output_names_the_block():
    """More channels in the student and no later agreement in a chain: a clear error."""
    teacher, student = _Stem(), _Stem(stride=2, pool=False, channels=6)
    with pytest.raises(ValueError, match=r"conv: student output \(6, 8, 8\) != teacher output"):
        plan_segments(teacher, student, ["conv", "pool", "head"], (1, 3, 16, 16))


def test_changed_block_without_parameters_joins_the_block_before():
    """A rule that leaves an Identity where a BatchNorm was: nothing there could learn, so it
    regresses with the conv before it, against the teacher's BatchNorm output."""
    torch.manual_seed(0)
    teacher = nn.Sequential()
    teacher.add_module("conv", nn.Conv2d(3, 4, 3, bias=False))
    teacher.add_module("bn", nn.BatchNorm2d(4))
    teacher.add_module("head", nn.Conv2d(4, 2, 1))
    student = nn.Sequential()
    student.add_module("conv", nn.Conv2d(3, 4, 3))
    student.add_module("bn", nn.Identity())
    student.add_module("head", teacher.head)
    changed = changed_blocks(teacher, student)
    assert changed == ["conv", "bn"]
    (segment,) = plan_segments(teacher, student, changed, (1, 3, 8, 8))
    assert (segment.blocks, segment.changed, segment.how) == (
        ("conv", "bn"),
        ("conv", "bn"),
        "extended",
    )
    assert "bn changed but has no parameters" in segment.note


def _stem_model(num_classes: int = 2) -> nn.Module:
    assert num_classes == 2
    return _Stem()


def _stride_two_student(teacher: nn.Module) -> tuple[nn.Module, list[str]]:
    """The stem's conv at stride 2 in place of its pool (which becomes an Identity)."""
    student = copy.deepcopy(teacher)
    student.conv.stride = (2, 2)
    student.pool = nn.Identity()
    return student, ["conv.weight", "conv.bias"]


def test_job_with_a_pooled_target_and_a_stage_without_parameters(tmp_path):
    """The job regresses conv against the pooled teacher output and skips (logging it) the
    regression of the Identity left by the pool, which has nothing to learn."""
    from deeprebirth.models import register_model
    from deeprebirth.train.job import run_job

    register_model("test_alignment_stem", _stem_model)
    cfg = tiny_config(
        tmp_path, "model.name=test_alignment_stem", "model.num_classes=2", "model.input_size=16"
    )
    result = run_job(cfg, student=_stride_two_student)
    assert result.stages == [["conv"], ["pool"]]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["blocks"], r["how"]) for r in records if r["kind"] == "alignment"] == [
        ("conv", "pooled"),
        ("pool", "output"),
    ]
    assert [r["phase"] for r in records if r["kind"] == "skip"] == ["regress:pool"]
    regress = [r["loss"] for r in records if r["kind"] == "train" and r["phase"] == "regress:conv"]
    assert len(regress) == 3 and all(loss > 0 for loss in regress)


def test_resnet18_job_on_synthetic_data_logs_its_alignment(tmp_path):
    """``model.name=torchvision:resnet18`` with 1 input channel runs through every phase; the
    metrics say the stem regressed against the teacher's maxpool output."""
    from deeprebirth.train.job import run_job

    cfg = tiny_config(
        tmp_path,
        "model.name=torchvision:resnet18",
        "model.in_channels=1",
        "surgery.rules=[streamline]",
        "schedule.regression_steps=2",
        "schedule.finetune_steps=2",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run_job(cfg)
    assert result.stages == [["conv1", "bn1", "maxpool"]]
    assert result.student.conv1.in_channels == 1 and result.student.conv1.stride == (4, 4)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (alignment,) = [r for r in records if r["kind"] == "alignment"]
    assert (alignment["how"], alignment["target"]) == ("extended", "maxpool")
    assert alignment["blocks"] == "conv1+bn1+maxpool"
    regress = [r for r in records if r["kind"] == "train" and r["phase"].startswith("regress")]
    assert len(regress) == 2 and all(r["loss"] > 0 for r in regress)
    labels = [h["label"] for h in result.history]
    assert labels[-2:] == ["regress:conv1+bn1+maxpool", "finetune:conv1+bn1+maxpool"]


def test_model_file_as_model_name_fills_geometry_and_refuses_other_classes(tmp_path):
    """A ``deeprebirth slim`` file as ``model.name``: its classes, channels and input size fill
    the defaults; a config stating other classes is refused, naming both."""
    from deeprebirth.cli import main
    from deeprebirth.train.config import load_config

    out = tmp_path / "gray.pt"
    args = ["slim", "--model", "torchvision:resnet18", "--num-classes", "3", "--in-channels", "1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main([*args, "--input-size", "40", "--rules", "streamline", "--out", str(out)]) == 0
    cfg = load_config(None, [f"model.name={out}", f"output_dir={tmp_path / 'run'}"])
    assert (cfg.model.num_classes, cfg.model.in_channels, cfg.model.input_size) == (3, 1, 40)
    with pytest.raises(
        ConfigError, match=r"'model.num_classes' is 5, but .*gray.pt was made with 3"
    ):
        load_config(None, [f"model.name={out}", "model.num_classes=5"])
    with pytest.raises(ConfigError, match="model.name: deeprebirth model file not found"):
        load_config(None, [f"model.name={tmp_path / 'missing.pt'}"])


def test_slim_cli_rejects_bad_geometry(tmp_path, capsys):
    from deeprebirth.cli import main

    out = str(tmp_path / "m.pt")
    assert (
        main(["slim", "--model", "bvlc_googlenet", "--input-size", "1", "2", "3", "--out", out])
        == 2
    )
    assert "--input-size takes one size or H W" in capsys.readouterr().err
    assert main(["slim", "--model", "bvlc_googlenet", "--in-channels", "0", "--out", out]) == 2
    assert "positive --input-size and --in-channels" in capsys.readouterr().err
