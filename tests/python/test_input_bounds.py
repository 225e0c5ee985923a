"""Image inputs of training and deployment: failures are counted, sizes are bounded, and one
decoding rule serves the training data sets, ``eval_transform`` and ``deeprebirth-run``."""

from __future__ import annotations

import struct
import sys
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import tiny_config, tiny_student  # noqa: E402

from deeprebirth.train.data import build_datasets  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_failing_only_at_decode(width: int = 12, height: int = 10) -> bytes:
    """A PNG whose chunks and CRCs are valid (PIL's ``verify`` passes) but whose pixel data is
    not zlib data, so decoding it fails."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"not zlib data")
        + _png_chunk(b"IEND", b"")
    )


def _image_folder(root: Path, per_class: int = 8) -> Path:
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 36), (25 * i, 80, 120)).save(folder / f"{i}.png")
    return root


# ---- images that fail only while decoding ------------------------------------------------


def test_decode_failure_passes_validation():
    """The premise of the tests below: the file is well-formed up to its pixel data."""
    import io

    with Image.open(io.BytesIO(_png_failing_only_at_decode())) as image:
        image.verify()
    with pytest.raises(OSError), Image.open(io.BytesIO(_png_failing_only_at_decode())) as image:
        image.load()


@pytest.mark.parametrize("workers", [0, 2])
def test_decode_failures_reach_datasets_skipped(workers, tmp_path):
    root = _image_folder(tmp_path / "data")
    bad = root / "train" / "dog" / "3.png"
    bad.write_bytes(_png_failing_only_at_decode())
    cfg = tiny_config(
        tmp_path / "run", "data.name=imagenet", f"data.root={root}", "model.num_classes=2"
    )
    data = build_datasets(cfg)
    assert data.skipped == []  # validation let it through
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(2):  # an image failing every epoch is one skipped image
            batches = list(DataLoader(data.train, batch_size=4, num_workers=workers))
    assert sum(len(y) for _, y in batches) == 16  # replaced by the next sample, not dropped
    assert data.skipped == [str(bad)]


def test_report_counts_images_that_fail_while_training(tmp_path):
    from deeprebirth.train.job import run_job

    root = _image_folder(tmp_path / "data")
    (root / "train" / "cat" / "5.png").write_bytes(_png_failing_only_at_decode())
    (root / "val" / "dog" / "0.png").write_bytes(b"not an image at all")  # found by validation
    cfg = tiny_config(
        tmp_path / "run",
        "data.name=imagenet",
        f"data.root={root}",
        "model.num_classes=2",
        "data.max_corrupt_fraction=0.1",
        "workers=2",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        run_job(cfg, student=tiny_student)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "- unreadable images skipped: 2\n" in report, report
