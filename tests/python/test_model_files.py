"""Model files and checkpoints carry no code: recipes + tensors, pickles refused, runs kept.

The reference for every rebuilt model is the model that was saved (outputs equal exactly).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from finetune_helpers import TINY_OVERRIDES  # noqa: E402

import deeprebirth  # noqa: E402
from deeprebirth.cli import main  # noqa: E402
from deeprebirth.io import UntrustedFileError, load_model, save_model  # noqa: E402
from deeprebirth.models import build_model, get_recipe, rebuild  # noqa: E402

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "synthetic_smoke.yaml")
EXACT = ["fold_bn", "fuse_conv_pool", "merge_branches"]


class _Payload:
    """A pickle that creates a marker file when unpickled (what a hostile model file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _hostile_file(path: Path, marker: Path, **record) -> Path:
    torch.save(
        {"format": "deeprebirth-model", "version": 1, "model": _Payload(marker), **record}, path
    )
    return path


def _small_googlenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("bvlc_googlenet", num_classes=4, width=0.125)


@pytest.fixture(autouse=True)
def _restore_onednn():
    enabled = torch.backends.mkldnn.enabled
    yield
    torch.backends.mkldnn.enabled = enabled


@pytest.mark.parametrize(
    "rules, options",
    [
        (["streamline", "branch_slim", *EXACT, "pack_conv"], {}),
        (["tucker"], {"tucker_energy": 0.6, "tucker_min_channels": 4}),
    ],
)
def test_model_file_rebuilds_the_saved_model(tmp_path, rules, options):
    slim, _ = deeprebirth.slim(_small_googlenet(), rules, (1, 3, 64, 64), **options)
    loaded, metadata = load_model(save_model(tmp_path / "m.pt", slim, {"note": [1, 2]}))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(x), slim.eval()(x), rtol=0, atol=0)
    assert metadata == {"note": [1, 2]}
    assert get_recipe(loaded) == get_recipe(slim)


def test_torchvision_and_flattened_models_rebuild(tmp_path):
    resnet = build_model("torchvision:resnet18", num_classes=5)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is not the identity
        for m in resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    slim, _ = deeprebirth.slim(resnet, ["fold_bn"], (1, 3, 64, 64))
    flat = deeprebirth.surgery.flatten_for_inference(slim.eval())
    loaded = load_model(save_model(tmp_path / "r.pt", flat))[0]
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), resnet(x), rtol=1e-4, atol=1e-5)
    assert [s["kind"] for s in get_recipe(loaded)["steps"]] == ["slim", "flatten"]


def test_rebuild_leaves_the_global_random_state_alone():
    recipe = get_recipe(deeprebirth.slim(_small_googlenet(), ["streamline"], (1, 3, 64, 64))[0])
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    rebuild(recipe)
    torch.testing.assert_close(torch.rand(3), expected)


def test_a_model_changed_by_hand_has_no_recipe(tmp_path):
    model = _small_googlenet()
    model.classifier = torch.nn.Linear(model.classifier.in_features, 9)
    assert get_recipe(model) is None
    path = save_model(tmp_path / "hand.pt", model)
    with pytest.raises(ValueError, match="template="):
        load_model(path)
    template = _small_googlenet()
    template.classifier = torch.nn.Linear(template.classifier.in_features, 9)
    loaded = load_model(path, template=template)[0]
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_old_pickled_files_need_an_explicit_opt_in(tmp_path):
    model = _small_googlenet()
    path = tmp_path / "old.pt"
    torch.save({"format": "deeprebirth-model", "version": 1, "model": model, "metadata": {}}, path)
    with pytest.raises(UntrustedFileError, match="trust_pickle=True"):
        load_model(path)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(load_model(path, trust_pickle=True)[0](x), model(x))


def _finetune(tmp_path: Path, *args: str) -> int:
    return main(
        [
            "finetune",
            *args,
            *TINY_OVERRIDES,
            "schedule.regression_steps=1",
            "schedule.finetune_steps=1",
            f"output_dir={tmp_path / 'run'}",
        ]
    )


def test_no_load_path_runs_code_from_a_file(tmp_path, capsys):
    """deeprebirth export, io.load_model, finetune --resume, surgery.student=, teacher.weights=,
    model.weights=: a hostile pickle is refused on every path and its code never runs."""
    marker = tmp_path / "code-ran"
    hostile = _hostile_file(tmp_path / "hostile.pt", marker, metadata={})
    with pytest.raises(UntrustedFileError):
        load_model(hostile)
    assert main(["export", str(hostile), "--out", str(tmp_path / "x.ts")]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    for key in ("surgery.student", "teacher.weights", "model.weights"):
        assert _finetune(tmp_path / key, "--config", CONFIG, f"{key}={hostile}") == 2
        assert "trust_pickle" in capsys.readouterr().err, key
    run = tmp_path / "resume" / "run"
    run.mkdir(parents=True)
    _hostile_file(run / "checkpoint.pt", marker)
    (run / "config.yaml").write_text(Path(CONFIG).read_text())
    assert main(["finetune", "--resume", str(run), *TINY_OVERRIDES]) == 2
    assert "pickled" in capsys.readouterr().err
    assert not marker.exists()


def test_resume_without_checkpoint_and_reused_output_dir_are_errors(tmp_path, capsys):
    config = ["--config", CONFIG]
    run = tmp_path / "run"
    run.mkdir()
    assert main(["finetune", "--resume", str(run), *config, *TINY_OVERRIDES]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    assert sorted(os.listdir(run)) == []  # nothing written, nothing trained
    assert _finetune(tmp_path, *config) == 0
    finished = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    first_log = (run / "metrics.jsonl").read_text().splitlines()
    assert _finetune(tmp_path, *config) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == finished
    assert _finetune(tmp_path, *config, "--overwrite") == 0
    # The same deterministic run again: its log alone, not appended to the first one.
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(first_log)
    student = load_model(run / "student.pt")[0]
    assert student(torch.randn(1, 3, 32, 32)).shape == (1, 4)


@pytest.mark.parametrize("content", [b"", b"truncated-not-a-zip", None])
def test_unreadable_checkpoints_are_clear_errors(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)  # foreign
    else:
        path.write_bytes(content)
    code = main(["finetune", "--resume", str(run), "--config", CONFIG, *TINY_OVERRIDES])
    assert code == 2
    assert str(path) in capsys.readouterr().err


def test_cli_slim_then_export_for_any_channel_count(tmp_path):
    out = tmp_path / "slim.pt"
    args = ["slim", "--model", "bvlc_googlenet", "--num-classes", "3", "--input-size", "64"]
    assert main([*args, "--rules", ",".join(EXACT), "--out", str(out)]) == 0
    onnx = tmp_path / "slim.onnx"
    assert main(["export", str(out), "--format", "onnx", "--out", str(onnx)]) == 0
    assert deeprebirth.export.read_metadata(onnx).input_size == [64, 64]
    gray = build_model("bvlc_googlenet", num_classes=2, width=0.125, in_channels=1)
    save_model(tmp_path / "gray.pt", gray, {"input_size": 32})
    ts = tmp_path / "gray.ts"
    assert main(["export", str(tmp_path / "gray.pt"), "--out", str(ts)]) == 0
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(deeprebirth.export.load_exported(ts)(x), gray(x))


def test_ranks_that_see_different_output_dirs_fail_before_training(tmp_path, monkeypatch):
    """Multi-node without a shared filesystem: the checkpoint exists on one node only. The ranks
    compare what they see (one all-reduce) and all fail with the same message."""
    from finetune_helpers import tiny_config

    from deeprebirth.train import job
    from deeprebirth.train.config import ConfigError
    from deeprebirth.train.distributed import DistContext

    cfg = tiny_config(tmp_path / "run")
    (tmp_path / "run").mkdir()
    torch.save({"format": "deeprebirth-checkpoint"}, tmp_path / "run" / "checkpoint.pt")
    ctx = DistContext(rank=0, world_size=2, device=torch.device("cpu"))
    # the other rank (another node) sees an empty folder: it adds nothing to the sums
    monkeypatch.setattr(job, "all_reduce_sum", lambda values, ctx: values)
    with pytest.raises(ConfigError, match="1 of 2 ranks see a checkpoint"):
        job._check_ranks_agree(cfg, ctx)
    monkeypatch.setattr(job, "all_reduce_sum", lambda values, ctx: values * 2)
    job._check_ranks_agree(cfg, ctx)  # every rank sees it: fine
