"""The command-line chain ``slim -> finetune -> export -> deeprebirth-run``, end to end.

Every step runs the real CLI in its own process (``python -m deeprebirth.cli``), each reading
only the files the step before wrote: ``slim`` writes the model file (geometry in its metadata),
``finetune`` takes that file as ``model.name`` (synthetic data, a few steps), ``export`` writes
TorchScript and ONNX from the finetuned ``student.pt``, and ``deeprebirth-run`` classifies a PNG
written here. Checked against independent references: the runner's logits equal the eager
student (loaded in this process from ``student.pt``) on the runner's own preprocessed input,
ONNX Runtime gives the same logits (one case: the export costs seconds), and that input equals the Python transform of the image
(for the grayscale model: the luma ``0.299 R + 0.587 G + 0.114 B`` of the RGB transform, computed
here). The finetuned student has the slim file's architecture (same surgery steps, same weight
shapes), and the job's metrics say how each changed block was regressed.

Cases: ``bvlc_googlenet`` (width 0.125, 3 channels, 32x32), ``torchvision:resnet18`` (1 channel,
non-square 40x48 slim input), ``timm:resnet18`` (3 channels, 40x40; skipped without timm).
The runner step is skipped when ``deeprebirth-run`` is not built (``cmake --build build/cmake``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deeprebirth.export import ExportMetadata, read_metadata
from deeprebirth.export.preprocess import eval_transform
from deeprebirth.io import load_model, read_model_record

ROOT = Path(__file__).resolve().parents[2]
RUNNER = next(iter(sorted((ROOT / "build").glob("**/csrc/runner/deeprebirth-run"))), None)
ATOL = 1e-4
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of OpenCV's RGB -> GRAY
# A few steps of every phase on a tiny synthetic set: the chain, not accuracy, is under test.
FINETUNE = [
    "data.synthetic_train_size=16",
    "data.synthetic_val_size=8",
    "batch_size=8",
    "teacher.train.steps=2",
    "schedule.regression_steps=2",
    "schedule.finetune_steps=2",
    "checkpoint_interval=0",
    "latency_repeats=0",
    "tensorboard=false",
    "log_interval=1",
    "threads=1",
    "onednn=false",
]


def _has_timm() -> bool:
    try:
        from deeprebirth.compat.timm import import_timm

        import_timm()
    except ImportError:
        return False
    return True


CASES = {
    "bvlc_googlenet": {
        "slim": ["--model-arg", "width=0.125", "--input-size", "32"],
        "rules": "streamline,branch_slim",
        "finetune": ["schedule.mode=all_at_once"],
        "size": 32,
        "channels": 3,
        "aligned": {"output"},
    },
    "torchvision:resnet18": {
        "slim": ["--in-channels", "1", "--input-size", "40", "48"],
        "rules": "streamline",
        "finetune": [],
        "size": 40,  # the job trains on squares
        "channels": 1,
        "aligned": {"extended"},
        "onnx": True,  # one case: ONNX export costs seconds per model
    },
    "timm:resnet18": {
        "slim": ["--input-size", "40"],
        "rules": "streamline",
        "finetune": [],
        "size": 40,
        "channels": 3,
        "aligned": {"extended"},
    },
}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``deeprebirth ARGS`` in a new process; fails the test with its stderr unless it exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "deeprebirth.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"deeprebirth {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result


def _write_png(path: Path) -> Path:
    """A colour PNG larger than every crop (the transform resizes and crops it)."""
    import cv2

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:70, 0:90] / 90.0
    planes = [np.sin(4 * x + c) * np.cos(3 * y - c) for c in range(3)]
    pixels = (np.stack(planes, -1) + 0.2 * rng.standard_normal((70, 90, 3)) + 1) / 2.4
    assert cv2.imwrite(str(path), (pixels * 255).clip(0, 255).astype(np.uint8))
    return path


def _python_input(image: Path, meta: ExportMetadata) -> torch.Tensor:
    """The model input by the Python transform; for a grayscale model, built here from the RGB
    transform (unnormalised) by the luma weights, then normalised with the record's mean/std."""
    if meta.channels == 3:
        return eval_transform(image, meta)
    rgb_meta = ExportMetadata(
        input_size=meta.input_size, resize_size=meta.resize_size, mean=[0, 0, 0], std=[1, 1, 1]
    )
    rgb = eval_transform(image, rgb_meta)
    luma = (torch.tensor(LUMA)[:, None, None] * rgb).sum(0, keepdim=True)
    return (luma - meta.mean[0]) / meta.std[0]


def _run_runner(ts_file: Path, image: Path, dump: Path, meta: ExportMetadata):
    """``deeprebirth-run`` logits, its dumped input batch ``(1, C, H, W)`` and its top-1 class
    index (the line after the logits: ``score  label (index)``)."""
    args = [str(ts_file), "--image", str(image), "--print-logits", "--threads", "1"]
    result = subprocess.run(
        [str(RUNNER), *args, "--dump-input", str(dump)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if "logits" in line)
    logits = torch.tensor([[float(v) for v in lines[at].split()[1:]]])
    top1 = int(lines[at + 1].rsplit("(", 1)[1].rstrip(")"))
    batch = torch.from_numpy(np.fromfile(dump, dtype=np.float32).copy())
    return logits, batch.reshape(1, meta.channels, *meta.input_size), top1


@pytest.mark.parametrize("model", list(CASES))
def test_slim_finetune_export_run(model, tmp_path):
    case = CASES[model]
    if model.startswith("timm:") and not _has_timm():
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    slim_file, run_dir = tmp_path / "slim.pt", tmp_path / "run"
    _cli("slim", "--model", model, "--num-classes", "4", "--rules", case["rules"],
         *case["slim"], "--out", str(slim_file), cwd=tmp_path)  # fmt: skip
    slim_record = read_model_record(slim_file)
    assert slim_record["metadata"]["in_channels"] == case["channels"]

    config = str(ROOT / "configs" / "synthetic_smoke.yaml")
    size = case["size"]
    _cli("finetune", "--config", config, f"model.name={slim_file}", f"output_dir={run_dir}",
         f"model.input_size={size}", *FINETUNE, *case["finetune"], cwd=tmp_path)  # fmt: skip
    student_file = run_dir / "student.pt"
    student, metadata = load_model(student_file)
    student.eval()
    # The file decided the surgery: the student has its steps and weight shapes.
    assert read_model_record(student_file)["recipe"]["steps"] == slim_record["recipe"]["steps"]
    shapes = {k: tuple(v.shape) for k, v in slim_record["state_dict"].items()}
    assert {k: tuple(v.shape) for k, v in student.state_dict().items()} == shapes
    assert metadata["source"] == model and metadata["in_channels"] == case["channels"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    aligned = {r["how"] for r in records if r["kind"] == "alignment"}
    assert aligned == case["aligned"]

    ts_file, onnx_file = tmp_path / "student.ts", tmp_path / "student.onnx"
    _cli("export", str(student_file), "--out", str(ts_file), cwd=tmp_path)  # torchscript
    meta = read_metadata(ts_file)
    assert (meta.channels, meta.input_size) == (case["channels"], [size, size])
    assert meta.color == ("GRAY" if case["channels"] == 1 else "RGB")
    if case.get("onnx"):
        _cli("export", str(student_file), "--format", "onnx", "--out", str(onnx_file), cwd=tmp_path)
        assert read_metadata(onnx_file).channels == case["channels"]

    image = _write_png(tmp_path / "image.png")
    expected_input = _python_input(image, meta)[None]
    with torch.no_grad():
        expected = student(expected_input)
    if case.get("onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: expected_input.numpy()})
        torch.testing.assert_close(torch.from_numpy(onnx_logits), expected, atol=ATOL, rtol=0)
    if RUNNER is None:
        pytest.skip("deeprebirth-run is not built (cmake --build build/cmake); Python steps passed")
    logits, runner_input, top1 = _run_runner(ts_file, image, tmp_path / "input.bin", meta)
    # OpenCV in C++ vs Python: the same operations, float rounding apart.
    torch.testing.assert_close(runner_input, expected_input, atol=1e-5, rtol=0)
    with torch.no_grad():
        eager = student(runner_input)
    torch.testing.assert_close(logits, eager, atol=ATOL, rtol=0)
    top2 = eager.topk(2, 1).values[0]
    if top2[0] - top2[1] > 10 * ATOL:  # the printed class is the eager one unless near a tie
        assert top1 == int(eager.argmax())


@pytest.mark.filterwarnings("ignore:torchvision's C\\+\\+ operators")
@pytest.mark.parametrize("channels", [1, 6])
def test_in_channels_keeps_the_response_to_grey_images(channels):
    """``slim --in-channels`` builds torchvision models with a new stem whose weights are the RGB
    ones summed (1 channel) or tiled and scaled (6): a grey image in every channel gives the
    unmodified RGB model's logits for that image in R, G and B."""
    from deeprebirth.models import build_model

    torch.manual_seed(0)
    rgb = build_model("torchvision:resnet18", num_classes=5).eval()
    torch.manual_seed(0)
    adapted = build_model("torchvision:resnet18", num_classes=5, in_channels=channels).eval()
    assert adapted.conv1.in_channels == channels
    grey = torch.rand(2, 1, 40, 48)
    with torch.no_grad():
        expected = rgb(grey.expand(-1, 3, -1, -1))
        torch.testing.assert_close(adapted(grey.expand(-1, channels, -1, -1)), expected)
    with pytest.raises(ValueError, match="transform_input"), torch.device("meta"):
        build_model("torchvision:googlenet", num_classes=5, in_channels=1, transform_input=True)


def test_export_reads_every_stored_geometry_form(tmp_path, capsys):
    """``[H, W]`` + ``in_channels`` (written now), ``[C, H, W]`` (older slim) and one int (older
    finetune) give the same record; two channel counts that disagree are refused (exit 2)."""
    from deeprebirth.cli import main
    from deeprebirth.io import save_model
    from deeprebirth.models import build_model

    gray = build_model("bvlc_googlenet", num_classes=2, width=0.125, in_channels=1)
    forms = {
        "current": {"input_size": [32, 40], "in_channels": 1},
        "chw": {"input_size": [1, 32, 40]},
        "square": {"input_size": 32, "in_channels": 1},
    }
    for name, metadata in forms.items():
        save_model(tmp_path / f"{name}.pt", gray, metadata)
        out = tmp_path / f"{name}.ts"
        assert main(["export", str(tmp_path / f"{name}.pt"), "--out", str(out)]) == 0
        meta = read_metadata(out)
        width = 32 if name == "square" else 40
        assert (meta.channels, meta.input_size, meta.color) == (1, [32, width], "GRAY")
        assert meta.mean == [pytest.approx(sum((0.485, 0.456, 0.406)) / 3)]
    save_model(tmp_path / "bad.pt", gray, {"input_size": [3, 32, 32], "in_channels": 1})
    assert main(["export", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "bad.ts")]) == 2
    assert (
        "states 3 channels in input_size [3, 32, 32] but in_channels 1" in capsys.readouterr().err
    )
