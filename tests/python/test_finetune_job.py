"""The layer-wise job on synthetic data with a hand-built student (no surgery API needed)."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import tiny_config, tiny_student  # noqa: E402

import deeprebirth  # noqa: E402
from deeprebirth.train.job import run_job  # noqa: E402
from deeprebirth.train.optim import param_groups  # noqa: E402
from deeprebirth.train.schedule import changed_blocks, group_stages, plan_phases  # noqa: E402


def _teacher():
    return deeprebirth.models.bvlc_googlenet(num_classes=4, width=0.125)


def test_changed_blocks_bottom_to_top_and_grouping():
    teacher = _teacher()
    student, _ = tiny_student(teacher)
    changed = changed_blocks(teacher, student)
    assert changed == ["conv1", "inception_3a"]
    assert group_stages(changed, "layerwise", None) == [["conv1"], ["inception_3a"]]
    assert group_stages(changed, "all_at_once", None) == [["conv1", "inception_3a"]]
    assert group_stages(changed, "layerwise", [["conv1", "inception_3a"]]) == [changed]
    with pytest.raises(ValueError, match="bottom to top"):
        group_stages(changed, "layerwise", [["inception_3a"], ["conv1"]])
    with pytest.raises(ValueError, match="exactly the changed blocks"):
        group_stages(changed, "layerwise", [["conv1"], ["conv2"]])
    names = [p.name for p in plan_phases([["conv1"], ["inception_3a"]], 2, 3, teacher_steps=4)]
    assert names == [
        "teacher",
        "regress:conv1",
        "finetune:conv1",
        "regress:inception_3a",
        "finetune:inception_3a",
    ]
    final = plan_phases([["conv1"], ["inception_3a"]], 2, 3, final_steps=5)[-1]
    assert (final.name, final.blocks, final.steps) == ("finetune:all", ("conv1", "inception_3a"), 5)


def test_new_layers_get_ten_times_the_learning_rate():
    teacher = _teacher()
    student, new = tiny_student(teacher)
    groups = param_groups(student, new, lr=0.01, new_lr_mult=10.0)
    by_name = {g["name"]: g for g in groups}
    assert by_name["new"]["lr"] == pytest.approx(0.1) and by_name["old"]["lr"] == pytest.approx(
        0.01
    )
    ids = {id(p) for p in by_name["new"]["params"]}
    assert ids == {id(p) for n, p in student.named_parameters() if n in set(new)}
    total = len(list(student.parameters()))
    assert len(by_name["new"]["params"]) + len(by_name["old"]["params"]) == total
    frozen = param_groups(student, new, lr=0.01, new_lr_mult=10.0, train_old=False)
    assert [g["name"] for g in frozen] == ["new"]
    assert sum(p.requires_grad for p in student.parameters()) == len(new)


def test_regression_trains_only_the_stage_block_and_its_loss_falls(tmp_path):
    teacher = _teacher()
    before_teacher = copy.deepcopy(teacher.state_dict())
    student, _ = tiny_student(teacher)
    steps = 12
    cfg = tiny_config(
        tmp_path,
        f"schedule.regression_steps={steps}",
        f"debug.stop_after_steps={steps}",
        "lr=0.01",
        "lr_schedule.name=constant",
    )
    result = run_job(cfg, student=lambda t: (copy.deepcopy(student), None))
    assert result.stopped
    working = result.student.state_dict()
    initial = student.state_dict()
    # conv1 (the stage's student block) moved; every other parameter (inception_3a is still the
    # teacher's copy until its stage) equals the teacher's, and the teacher did not move.
    for name, value in working.items():
        if name.startswith("conv1."):
            assert not torch.equal(value, initial[name]), name
        else:
            assert torch.equal(value, before_teacher[name]), name
    assert all(torch.equal(v, before_teacher[n]) for n, v in result.teacher.state_dict().items())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train" and r["phase"] == "regress:conv1"]
    assert len(losses) == steps
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("mode", ["layerwise", "all_at_once"])
def test_job_runs_stages_in_order_and_reports(tmp_path, mode):
    cfg = tiny_config(
        tmp_path,
        f"schedule.mode={mode}",
        "teacher.train.enabled=true",
        "teacher.train.steps=2",
        "schedule.final_finetune_steps=2",
        "latency_repeats=2",
    )
    result = run_job(cfg, student=tiny_student)
    labels = [h["label"] for h in result.history]
    if mode == "layerwise":
        stages = ["conv1", "inception_3a"]
    else:
        stages = ["conv1+inception_3a"]
    expected = ["teacher", "student, before training"]
    for s in stages:
        expected += [f"regress:{s}", f"finetune:{s}"]
    assert labels == expected + ["finetune:all"]
    assert all(0 <= h["top1"] <= h["top5"] <= 100 for h in result.history)
    report = (tmp_path / "report.md").read_text()
    assert "| teacher |" in report and "| student |" in report and "finetune:" in report
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "accuracy.png").stat().st_size > 0
        assert "![accuracy per stage](accuracy.png)" in report
    assert {"eval.csv", "train.csv", "metrics.jsonl", "student.pt", "checkpoint.pt"} <= {
        p.name for p in tmp_path.iterdir()
    }
    # A hand-built student carries no rebuild recipe: its weights load into the same architecture.
    template = tiny_student(result.teacher)[0]
    student, meta = deeprebirth.io.load_model(tmp_path / "student.pt", template=template)
    assert changed_blocks(result.teacher, student) == ["conv1", "inception_3a"]
    assert student(torch.randn(1, 3, 32, 32)).shape == (1, 4)


@pytest.fixture(autouse=True)
def _restore_onednn():
    """The job switches oneDNN off for tiny models (``onednn=false``); restore it afterwards."""
    enabled = torch.backends.mkldnn.enabled
    yield
    torch.backends.mkldnn.enabled = enabled
    torch.use_deterministic_algorithms(False)


def test_job_puts_back_the_process_settings_it_changes(tmp_path):
    """threads, oneDNN and deterministic algorithms are the job's while it runs (the tiny config
    sets 1, off, on) and the caller's again afterwards, whether it returns or raises: a job
    left oneDNN off and one thread for the rest of the process."""
    from deeprebirth.train.config import ConfigError

    torch.backends.mkldnn.enabled = True
    expected = (torch.get_num_threads(), True, False)

    def settings():
        return (
            torch.get_num_threads(),
            torch.backends.mkldnn.enabled,
            torch.are_deterministic_algorithms_enabled(),
        )

    torch.use_deterministic_algorithms(False)
    run_job(tiny_config(tmp_path / "ok"), student=tiny_student)
    assert settings() == expected
    with pytest.raises(ConfigError):
        run_job(
            tiny_config(tmp_path / "bad", "schedule.stages=[[no_such_block]]"), student=tiny_student
        )
    assert settings() == expected


def test_unknown_stage_block_fails_before_training(tmp_path):
    from deeprebirth.train.config import ConfigError

    cfg = tiny_config(
        tmp_path,
        "schedule.stages=[[conv1],[inception_9z]]",
        "teacher.train.enabled=true",
        "teacher.train.steps=50",
    )
    with pytest.raises(ConfigError, match="inception_9z"):
        run_job(cfg, student=tiny_student)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_image_folder_job_skips_a_corrupt_image_and_counts_it(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    for split in ("train", "val"):
        for label in ("a", "b", "c", "d"):
            (root / split / label).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 36), (60 * i, 20, 200)).save(
                    root / split / label / f"{i}.jpg"
                )
    (root / "train" / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    cfg = tiny_config(
        tmp_path / "run",
        "data.name=imagenet",
        f"data.root={root}",
        "batch_size=4",
        "data.max_corrupt_fraction=0.1",
        "schedule.regression_steps=2",
        "schedule.finetune_steps=2",
    )
    with pytest.warns(RuntimeWarning, match="bad.jpg"):
        result = run_job(cfg, student=tiny_student)
    assert not result.stopped and len(result.history) == 6
    assert "- unreadable images skipped: 1" in (tmp_path / "run" / "report.md").read_text()
