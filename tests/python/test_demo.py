"""``deeprebirth demo`` (the README's main command) end to end, in a tiny setting.

Runs every step of the pipeline on a few hundred real Fashion-MNIST images with a handful of
training steps: the point is that each step runs and checks what it claims (the exact deployment
rewrite keeps the logits, the exported files reload with the eager logits), not the accuracy.
"""

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from deeprebirth.cli import main
from deeprebirth.export import load_exported, uses_deeprebirth_ops
from deeprebirth.io import load_model
from deeprebirth.train.data import FASHION_MNIST_ROOT

pytestmark = pytest.mark.skipif(
    not (Path(FASHION_MNIST_ROOT) / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian fashion-mnist package not installed",
)

TINY = [
    "teacher.train.steps=4",
    "data.train_limit=256",
    "data.val_limit=128",
    "schedule.regression_steps=1",
    "schedule.finetune_steps=1",
    "schedule.final_finetune_steps=2",
    "batch_size=32",
    "workers=0",
]


def test_demo_runs_every_step_and_checks_it(tmp_path, capsys):
    assert main(["demo", "--repeats", "2", *TINY, f"output_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    for step in ("1/5 plan", "2/5 teacher", "3/5 deploy", "4/5 export", "5/5 benchmark", "summary"):
        assert step in out
    assert "merge_branches" in out  # the deployment rewrite found sites
    assert re.search(r"max \|diff\| \S+, relative \S+ \(within", out)
    # The exported files hold the deployed student: same logits as the trained student.
    student = load_model(tmp_path / "student.pt")[0].eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        expected = student(x)
    names = ["student.ts", "student.onnx"]
    if importlib.util.find_spec("executorch") is not None:  # the phone path, timed in the table
        names.append("student.pte")
        assert re.search(r"student \(ExecuTorch \.pte\) +\d+\.\d+ +\d+\.\d+ ", out)
    for name in names:
        torch.testing.assert_close(
            load_exported(tmp_path / name)(x), expected, rtol=1e-4, atol=1e-4
        )
    assert (tmp_path / "report.md").is_file()


def test_demo_deploys_fused_operators(tmp_path):
    import deeprebirth
    from deeprebirth.commands.demo import _deploy
    from deeprebirth.models import bvlc_googlenet

    teacher = bvlc_googlenet(num_classes=10, width=0.125, in_channels=1).eval()
    x = torch.randn(1, 1, 32, 32)
    student, _ = deeprebirth.slim(teacher, ["streamline", "branch_slim"], x)
    deployed, check = _deploy(student, x)
    assert uses_deeprebirth_ops(deployed) and not uses_deeprebirth_ops(student)
    assert check.ok
    # flattened: one graph whose modules are layers, no containers left to dispatch through
    assert isinstance(deployed, torch.fx.GraphModule)
    assert not any(isinstance(m, torch.nn.Sequential) for m in deployed.modules())
