"""Bad configuration and bad data fail before training, naming the key or file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import tiny_config  # noqa: E402

from deeprebirth.train.config import ConfigError, load_config  # noqa: E402
from deeprebirth.train.data import DataError, build_datasets  # noqa: E402
from deeprebirth.train.student import check_surgery_rules  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "name",
    ["synthetic_smoke", "fashion_mnist_googlenet", "fashion_mnist_demo", "imagenet_googlenet"],
)
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.new_layer_lr_mult == 10.0


def test_defaults_and_overrides():
    cfg = load_config(None, ["lr=0.05", "schedule.mode=all_at_once", "schedule.stages=[[conv1]]"])
    assert (cfg.lr, cfg.schedule.mode, cfg.new_layer_lr_mult) == (0.05, "all_at_once", 10.0)
    assert cfg.schedule.stages == [["conv1"]]


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("schedule:\n  regresion_steps: 10\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml.*unknown config key 'schedule\.regresion_steps'"
    ):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("batch_size=big", r"'batch_size' expects int"),
        ("lr=fast", r"'lr' expects float"),
        ("deterministic=maybe", r"'deterministic' expects bool"),
        ("model.width=-1", r"'model\.width' expects a value > 0"),
        ("optimizer.name=rmsprop", r"'optimizer\.name' expects one of \('sgd', 'adamw'\)"),
        ("teacher.weights=/nonexistent/teacher.pt", r"'teacher\.weights' expects an existing file"),
        ("data.name=imagenet", r"'data\.root' expects a folder"),
    ],
)
def test_wrong_type_or_value_names_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/x.yaml")


def _image_folder(root: Path, classes=("cat", "dog"), per_class=5) -> Path:
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (12, 10), (40 * i, 80, 120)).save(folder / f"{i}.png")
    return root


def test_missing_data_dir(tmp_path):
    cfg = tiny_config(tmp_path / "run", "data.name=imagenet", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="nowhere"):
        build_datasets(cfg)
    (tmp_path / "data" / "train").mkdir(parents=True)
    cfg = tiny_config(tmp_path / "run", "data.name=imagenet", f"data.root={tmp_path / 'data'}")
    with pytest.raises(DataError, match=r"no class folders"):
        build_datasets(cfg)


def test_empty_class_folder_is_named(tmp_path):
    root = _image_folder(tmp_path / "data")
    (root / "train" / "emu").mkdir()
    cfg = tiny_config(
        tmp_path / "run", "data.name=imagenet", f"data.root={root}", "model.num_classes=2"
    )
    with pytest.raises(DataError, match=r"train/emu: empty class folder"):
        build_datasets(cfg)


def test_unreadable_image_is_error_or_skipped_and_counted(tmp_path):
    root = _image_folder(tmp_path / "data", per_class=10)
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    base = ["data.name=imagenet", f"data.root={root}", "model.num_classes=2"]
    with pytest.raises(DataError, match=r"1 of 21 images are unreadable.*broken\.png"):
        build_datasets(tiny_config(tmp_path / "run", *base, "data.max_corrupt_fraction=0"))
    with pytest.warns(RuntimeWarning, match="skipping unreadable image .*broken.png"):
        data = build_datasets(tiny_config(tmp_path / "run", *base, "data.max_corrupt_fraction=0.1"))
    assert data.skipped == [str(bad)]
    assert len(data.train) == 20 and len(data.val) == 20
    image, label = data.train[0]
    assert image.shape == (3, 32, 32) and label == 0


def test_corrupt_image_found_while_training_is_skipped(tmp_path):
    root = _image_folder(tmp_path / "data")
    cfg = tiny_config(
        tmp_path / "run", "data.name=imagenet", f"data.root={root}", "model.num_classes=2"
    )
    data = build_datasets(cfg)
    path, _ = data.train.folder.samples[0]
    Path(path).write_bytes(b"garbage after validation")
    with pytest.warns(RuntimeWarning, match="skipping unreadable image"):
        image, _ = data.train[0]
    assert image.shape == (3, 32, 32) and data.train.failures == 1


def test_unknown_surgery_rule_is_named_before_training(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"surgery\.rules: unknown rule\(s\) \['bogus'\]; known rules: .*streamline",
    ):
        check_surgery_rules(tiny_config(tmp_path, "surgery.rules=[streamline,bogus]"))
