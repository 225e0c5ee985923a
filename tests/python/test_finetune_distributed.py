"""Two CPU processes under torchrun (gloo): the job completes and only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import TINY_OVERRIDES  # noqa: E402

import deeprebirth  # noqa: E402
from deeprebirth import io  # noqa: E402
from deeprebirth.train.checkpoint import load_checkpoint  # noqa: E402
from deeprebirth.train.schedule import changed_blocks  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_two_process_gloo_run_completes(tmp_path):
    teacher = deeprebirth.models.bvlc_googlenet(num_classes=4, width=0.125)
    # A student file rebuilds by replaying its surgery: made by deeprebirth.slim, not by hand.
    student, _ = deeprebirth.slim(teacher, ["streamline", "branch_slim"], (1, 3, 32, 32))
    new = list(deeprebirth.surgery.new_parameters(student))
    stages = [[name] for name in changed_blocks(teacher, student)]
    io.save_model(tmp_path / "teacher.pt", teacher)
    io.save_model(tmp_path / "student.pt", student, {"new_parameters": new})
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "deeprebirth.finetune",
        "--config",
        str(REPO / "configs" / "synthetic_smoke.yaml"),
        *TINY_OVERRIDES,
        f"output_dir={out}",
        f"teacher.weights={tmp_path / 'teacher.pt'}",
        f"surgery.student={tmp_path / 'student.pt'}",
        "checkpoint_interval=2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "report:" in done.stdout
    record = load_checkpoint(out)
    assert record["phase_index"] == 2 * len(stages) and record["stages"] == stages
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["label"] for r in evals if r["kind"] == "eval"]
    assert (
        len(evals) == len(set(evals)) == 2 + 2 * len(stages)
    )  # written once (rank 0), not once per rank
    assert "- processes: 2" in (out / "report.md").read_text()
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temporary files
