"""A run killed mid-stage and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import tiny_config, tiny_student  # noqa: E402

from deeprebirth.train.checkpoint import load_checkpoint  # noqa: E402
from deeprebirth.train.job import run_job  # noqa: E402

# teacher 4 steps, then per stage regression 3 + finetune 4; checkpoints every 2 steps.
JOB = [
    "teacher.train.enabled=true",
    "teacher.train.steps=4",
    "schedule.regression_steps=3",
    "schedule.finetune_steps=4",
    "checkpoint_interval=2",
    "seed=3",
]


@pytest.fixture(autouse=True)
def _restore_global_torch_state():
    enabled = torch.backends.mkldnn.enabled
    yield
    torch.backends.mkldnn.enabled = enabled
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("stop_after", [10, 17])
def test_resumed_run_matches_uninterrupted_run(tmp_path, stop_after):
    # stop 10: mid finetune:conv1 (step 3 of 4, last checkpoint at its step 2: one step redone);
    # stop 17: finetune:inception_3a step 3 (checkpoint at its step 2), all student blocks in.
    full = run_job(tiny_config(tmp_path / "full", *JOB), student=tiny_student)
    assert not full.stopped

    killed = run_job(
        tiny_config(tmp_path / "cut", *JOB, f"debug.stop_after_steps={stop_after}"),
        student=tiny_student,
    )
    assert killed.stopped
    record = load_checkpoint(tmp_path / "cut")
    assert record is not None and record["optimizer"] is not None and record["step"] == 2
    resumed = run_job(tiny_config(tmp_path / "cut", *JOB), student=tiny_student, resume=True)
    assert not resumed.stopped

    expected, actual = full.student.state_dict(), resumed.student.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert [h["top1"] for h in full.history] == [h["top1"] for h in resumed.history]
