"""Bad finetune configs fail before any training step: exit 2, a message naming the key.

Each case runs ``deeprebirth finetune`` (in-process through :func:`deeprebirth.cli.main`, one
case through the console entry point) on ``configs/synthetic_smoke.yaml`` with one bad override,
and checks the exit code, the ``deeprebirth finetune: error:`` line naming the key, and that no
training step ran (the run folder holds no ``metrics.jsonl``, no checkpoint).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deeprebirth.cli import main
from deeprebirth.models import bvlc_googlenet
from deeprebirth.train.config import ConfigError, config_to_yaml, load_config

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "synthetic_smoke.yaml"
QUIET = ["tensorboard=false", "latency_repeats=0"]


def _finetune(out: Path, *overrides: str) -> int:
    return main(["finetune", "--config", str(SMOKE), f"output_dir={out}", *QUIET, *overrides])


def _assert_no_training(out: Path) -> None:
    if out.is_dir():
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.momentum=-1", r"'optimizer\.momentum' expects a value in \[0\.0, 1\.0\)"),
        ("optimizer.weight_decay=-5", r"'optimizer\.weight_decay' expects a value >= 0"),
        ("teacher.train.momentum=1.5", r"'teacher\.train\.momentum' expects a value in"),
        ("schedule.stages=[[]]", r"'schedule\.stages' expects non-empty groups.*group 0"),
        ("schedule.stages=[[conv1],[conv1,conv2]]", r"'schedule\.stages' expects each block once"),
        ("latency_repeats=-3", r"'latency_repeats' expects a value >= 0, but got -3"),
        ("log_interval=0", r"'log_interval' expects a value > 0, but got 0"),
        ("threads=-1", r"'threads' expects a value >= 0, but got -1"),
        ("seed=-1", r"'seed' expects a value in \[0, 4294967296\)"),
        ("lr=inf", r"'lr' expects a finite number, but got inf"),
        ("lr=nan", r"'lr' expects a finite number, but got nan"),
        ("teacher.train.lr=-0.1", r"'teacher\.train\.lr' expects a value > 0"),
        ("new_layer_lr_mult=inf", r"'new_layer_lr_mult' expects a finite number"),
        ("data.max_corrupt_fraction=2", r"'data\.max_corrupt_fraction' expects a value in"),
        ("device=cuda", r"'device' is 'cuda', but no CUDA device is available"),
        ("model.name=resnet", r"'model\.name'.*'resnet'.*bvlc_googlenet.*torchvision:<name>"),
        ("model.input_size=4", r"'model\.input_size' is 4, too small for bvlc_googlenet"),
        ("batch_size=1000", r"batch_size is 1000, larger than the 64 training samples"),
    ],
)
def test_bad_value_exits_2_naming_the_key_before_training(override, message, tmp_path, capsys):
    if override == "device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    out = tmp_path / "run"
    assert _finetune(out, override) == 2
    err = capsys.readouterr().err
    assert err.startswith("deeprebirth finetune: error: "), err
    assert re.search(message, err), err
    _assert_no_training(out)


@pytest.mark.parametrize("below", ["", "sub/run"])
def test_output_dir_that_is_a_file_exits_2(below, tmp_path, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder\n")
    out = a_file / below if below else a_file
    assert _finetune(out) == 2
    err = capsys.readouterr().err
    assert f"'output_dir' expects a folder, but {a_file} is a file" in err, err
    assert a_file.read_text() == "not a folder\n"


def test_smallest_input_size_is_the_models_own(tmp_path):
    """The bound reported for model.input_size is where the real (CPU) model starts to work."""
    model = bvlc_googlenet(num_classes=4, width=0.125).eval()

    def runs(size: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
        except RuntimeError:
            return False
        return True

    smallest = next(size for size in range(1, 64) if runs(size))
    with pytest.raises(ConfigError, match=rf"smallest square input it accepts is {smallest}$"):
        load_config(SMOKE, [f"model.input_size={smallest - 1}"])
    assert load_config(SMOKE, [f"model.input_size={smallest}"]).model.input_size == smallest


def test_boundary_values_are_accepted():
    cfg = load_config(
        SMOKE,
        [
            "optimizer.momentum=0",
            "optimizer.weight_decay=0",
            "latency_repeats=0",
            "threads=0",
            "log_interval=1",
            "seed=4294967295",
            "schedule.stages=[[conv1,conv2],[inception_3a]]",
            "data.max_corrupt_fraction=1",
            "device=cpu",
        ],
    )
    assert cfg.schedule.stages == [["conv1", "conv2"], ["inception_3a"]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "checkpoint.pt"),
        (None, "checkpoint.pt"),  # a real checkpoint, truncated
        (b"PK\x03\x04 not really a zip archive", "checkpoint.pt"),
        ("foreign", "not a deeprebirth checkpoint"),
    ],
)
def test_unreadable_checkpoint_exits_2_on_resume(content, message, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(config_to_yaml(load_config(SMOKE, [f"output_dir={out}"])))
    path = out / "checkpoint.pt"
    if content == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif content is None:
        torch.save({"weights": torch.zeros(10_000)}, path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(content)
    assert main(["finetune", "--resume", str(out), *QUIET]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deeprebirth finetune: error: ") and message in err, err
    assert not (out / "metrics.jsonl").exists()


def test_console_entry_point_exits_2_with_the_message(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "deeprebirth.cli", "finetune", "--config", str(SMOKE)]
        + [f"output_dir={out}", "log_interval=0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "deeprebirth finetune: error: config key 'log_interval'" in result.stderr
    assert not out.exists()
