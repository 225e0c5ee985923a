"""Image inputs of training and deployment: failures are counted, sizes are bounded, and one
decoding rule serves the training data sets, ``eval_transform`` and ``deeprebirth-run``."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from finetune_helpers import tiny_config, tiny_student  # noqa: E402

import deeprebirth  # noqa: E402
from deeprebirth.export import ExportMetadata, read_metadata  # noqa: E402
from deeprebirth.export.metadata import MAX_IMAGE_SIDE  # noqa: E402
from deeprebirth.export.preprocess import (  # noqa: E402
    MAX_IMAGE_PIXELS,
    eval_transform,
    image_header_size,
    read_image_rgb,
    resize_shorter_side,
)
from deeprebirth.train.data import IMAGENET_MEAN, IMAGENET_STD, build_datasets  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RUNNER = next(iter(sorted((REPO / "build").glob("**/csrc/runner/deeprebirth-run"))), None)
needs_runner = pytest.mark.skipif(
    RUNNER is None, reason="deeprebirth-run is not built (cmake --build build/cmake)"
)
EXIT_USAGE, EXIT_MODEL, EXIT_IMAGE = 2, 3, 4  # csrc/runner/errors.h
# Address-space limit of the child processes below: far under the 15.7 GB an unbounded resize of
# a 1x20000 image asks for, so that a missing bound fails the test instead of the machine.
MEMORY_LIMIT = 4 << 30


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


# ---- one decoder for training and deployment ----------------------------------------------


def _deep_folder(root: Path) -> dict[str, Path]:
    """An image folder whose ``cat`` class holds 16-bit PNGs (colour and grayscale) spanning the
    whole 16-bit range, and whose ``dog`` class holds 8-bit ones."""
    import cv2

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:45, 0:52] / 52.0
    ramp = np.stack([x, y, (x + y) / 2], -1)  # smooth content over [0, 1]
    deep = (ramp + 0.02 * rng.standard_normal(ramp.shape)).clip(0, 1)
    files = {
        "cat/colour16.png": (deep * 65535).round().astype(np.uint16),
        "cat/gray16.png": (deep[..., 0] * 65535).round().astype(np.uint16),
        "dog/colour8.png": (deep * 255).round().astype(np.uint8),
        "dog/gray8.png": (deep[..., 1] * 255).round().astype(np.uint8),
    }
    paths = {}
    for split in ("train", "val"):
        for name, pixels in files.items():
            path = root / split / name
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), pixels)
            paths[f"{split}/{name}"] = path
    return paths


def _sample(dataset, path: Path) -> torch.Tensor:
    index = [p for p, _ in dataset.folder.samples].index(str(path))
    return dataset[index][0]


def _denormalized(image: torch.Tensor) -> torch.Tensor:
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    return image * std + mean


def test_16_bit_images_reach_training_as_deployed(tmp_path):
    """The training and validation samples of a 16-bit PNG are eval_transform's tensor (the
    deployed transform), bit for bit, and not clipped: their mean is the file's mean."""
    import cv2

    paths = _deep_folder(tmp_path / "data")
    base = [
        "data.name=imagenet",
        f"data.root={tmp_path / 'data'}",
        "model.num_classes=2",
        "batch_size=2",
    ]
    data = build_datasets(tiny_config(tmp_path / "run", *base, "data.augment=false"))
    deployed = ExportMetadata(input_size=[32, 32], resize_size=round(32 * 256 / 224))
    for name in ("colour16.png", "gray16.png", "colour8.png"):
        label = "cat" if "16" in name else "dog"
        expected = eval_transform(paths[f"val/{label}/{name}"], deployed)
        torch.testing.assert_close(
            _sample(data.val, paths[f"val/{label}/{name}"]), expected, rtol=0, atol=0
        )
        torch.testing.assert_close(
            _sample(data.train, paths[f"train/{label}/{name}"]), expected, rtol=0, atol=0
        )
    for name in ("colour16.png", "gray16.png"):  # PIL's convert("RGB") clips gray16 to 1.0
        raw = cv2.imread(str(paths[f"train/cat/{name}"]), cv2.IMREAD_UNCHANGED) / 65535.0
        pixels = _denormalized(_sample(data.train, paths[f"train/cat/{name}"]))
        assert abs(pixels.mean().item() - raw.mean()) < 0.05, name
        assert (pixels > 0.999).float().mean().item() < 0.05, name


def test_16_bit_images_are_decoded_alike_with_augmentation(tmp_path):
    paths = _deep_folder(tmp_path / "data")
    base = [
        "data.name=imagenet",
        f"data.root={tmp_path / 'data'}",
        "model.num_classes=2",
        "batch_size=2",
    ]
    data = build_datasets(tiny_config(tmp_path / "run", *base, "data.augment=true"))
    for name in ("colour16.png", "gray16.png"):
        path = paths[f"train/cat/{name}"]
        np.testing.assert_array_equal(data.train.folder.loader(str(path)), read_image_rgb(path))
        torch.manual_seed(0)
        pixels = _denormalized(_sample(data.train, path))
        assert pixels.shape == (3, 32, 32)
        assert (pixels > 0.999).float().mean().item() < 0.05, name


@needs_runner
def test_16_bit_images_reach_the_runner_as_in_training(tmp_path):
    """deeprebirth-run's input (--dump-input) and logits for a 16-bit PNG equal the training
    sample and the model's logits on it."""
    paths = _deep_folder(tmp_path / "data")
    base = [
        "data.name=imagenet",
        f"data.root={tmp_path / 'data'}",
        "model.num_classes=2",
        "batch_size=2",
    ]
    data = build_datasets(tiny_config(tmp_path / "run", *base, "data.augment=false"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    exported = deeprebirth.export(
        model, torch.randn(1, 3, 32, 32), "torchscript", out=tmp_path / "m.ts"
    )
    images = [paths["train/cat/colour16.png"], paths["train/cat/gray16.png"]]
    dump = tmp_path / "input.bin"
    args = [str(RUNNER), str(exported), "--print-logits", "--dump-input", str(dump)]
    result = _run_limited([*args, "--threads", "1", *(f"--image={p}" for p in images)])
    assert result.returncode == 0, result.stderr
    runner_input = torch.from_numpy(np.fromfile(dump, dtype=np.float32)).reshape(2, 3, 32, 32)
    training = torch.stack([_sample(data.train, p) for p in images])
    torch.testing.assert_close(runner_input, training, rtol=0, atol=1e-4)
    rows = [line.split()[1:] for line in result.stdout.splitlines() if "logits" in line]
    with torch.no_grad():
        expected = model(training)
    torch.testing.assert_close(torch.tensor([[float(v) for v in r] for r in rows]), expected)


# ---- images that fail only while decoding ------------------------------------------------


def test_decode_failure_passes_validation():
    """The premise of the tests below: the file is well-formed up to its pixel data."""
    import io

    with Image.open(io.BytesIO(_png_failing_only_at_decode())) as image:
        image.verify()
    with pytest.raises(OSError), Image.open(io.BytesIO(_png_failing_only_at_decode())) as image:
        image.load()


def _run_in_child(function: str, *args: str) -> None:
    """Runs this module's ``function(*args)`` in a fresh Python and fails with its output if it
    fails. For DataLoader workers: on an AMX CPU the pytest process, after the bf16 and
    deployment tests, has died of SIGSEGV (si_code SI_KERNEL) receiving a worker's SIGCHLD."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import test_input_bounds as t; t.{function}(*sys.argv[1:])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def check_decode_failures_reach_datasets_skipped(workers: str, folder: str) -> None:
    tmp_path = Path(folder)
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
            batches = list(DataLoader(data.train, batch_size=4, num_workers=int(workers)))
    assert sum(len(y) for _, y in batches) == 16  # replaced by the next sample, not dropped
    assert data.skipped == [str(bad)]


def test_decode_failures_reach_datasets_skipped(tmp_path):
    check_decode_failures_reach_datasets_skipped("0", str(tmp_path / "0"))
    _run_in_child("check_decode_failures_reach_datasets_skipped", "2", str(tmp_path / "2"))


def check_report_counts_images_that_fail_while_training(folder: str) -> None:
    from deeprebirth.train.job import run_job

    tmp_path = Path(folder)
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


def test_report_counts_images_that_fail_while_training(tmp_path):
    _run_in_child("check_report_counts_images_that_fail_while_training", str(tmp_path))


# ---- size limits --------------------------------------------------------------------------


def _limited_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run_limited(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_limited_memory,
    )


def _tiny_export(path: Path, **metadata) -> Path:
    """A small TorchScript classifier with a 32x32 crop; ``metadata`` overrides record fields
    written as they are (no validation), as a foreign or tampered file would carry them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    record = json.loads(ExportMetadata(input_size=[32, 32], resize_size=40).to_json())
    record.update(metadata)
    torch.jit.save(
        torch.jit.script(model), str(path), _extra_files={"deeprebirth.json": json.dumps(record)}
    )
    return path


@pytest.fixture
def strip_png(tmp_path) -> Path:
    """A 1x20000 grayscale PNG: about 100 bytes on disk."""
    import cv2

    path = tmp_path / "strip.png"
    assert cv2.imwrite(str(path), np.zeros((1, 20000), np.uint8))
    assert path.stat().st_size < 1000
    return path


def test_eval_transform_bounds_the_resize(strip_png):
    code = (
        "import sys\n"
        "from deeprebirth.export import ExportMetadata\n"
        "from deeprebirth.export.preprocess import eval_transform\n"
        "try:\n"
        "    eval_transform(sys.argv[1], ExportMetadata(input_size=[224, 224], resize_size=256))\n"
        "except ValueError as error:\n"
        "    print(error)\n"
        "    sys.exit(3)\n"
    )
    result = _run_limited([sys.executable, "-c", code, str(strip_png)])
    assert result.returncode == 3, result.stderr[-2000:]
    assert f"image '{strip_png}'" in result.stdout
    assert "gives 256x5120000, more than the limit of 16384 pixels per side" in result.stdout


def test_resize_limit_is_on_the_longer_side():
    tall = np.zeros((MAX_IMAGE_SIDE // 256, 1, 3), np.float32)  # 64:1, just fits at 256
    assert resize_shorter_side(tall, 256).shape == (MAX_IMAGE_SIDE, 256, 3)
    with pytest.raises(ValueError, match=r"64x1 image to shorter side 257 gives 16448x257"):
        resize_shorter_side(tall, 257)


@pytest.mark.parametrize(("name", "shape"), [("a.png", (37, 53, 3)), ("b.jpg", (61, 29, 3))])
def test_header_size_is_the_decoded_size(name, shape, tmp_path):
    import cv2

    path = tmp_path / name
    assert cv2.imwrite(str(path), np.full(shape, 90, np.uint8))
    assert image_header_size(path) == cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape[:2]
    assert image_header_size(REPO / "README.md") is None


def _png_header(width: int, height: int) -> bytes:
    """The signature and IHDR chunk of a PNG, with no pixel data after them."""
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )


def _jpeg_header(width: int, height: int) -> bytes:
    """SOI, an APP0 segment and a baseline frame header, with no scan after them."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 3) + bytes(3)
    return b"\xff\xd8" + app0 + frame


@pytest.mark.parametrize("header", [_png_header, _jpeg_header])
def test_images_over_the_pixel_limit_are_refused_from_the_header(header, tmp_path):
    """Only a header: had the decoder run, the error would be "cannot read image"."""
    path = tmp_path / ("big.png" if header is _png_header else "big.jpg")
    path.write_bytes(header(65535, MAX_IMAGE_PIXELS // 65535 + 1))
    with pytest.raises(ValueError, match=rf"4097x65535 pixels, more than the limit of {1 << 28}"):
        read_image_rgb(path)
    path.write_bytes(header(64, 48))
    with pytest.raises(ValueError, match="cannot read image"):
        read_image_rgb(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_size": [10**9, 32]}, r"input_size \[H, W\] with 0 < H, W <= 16384"),
        ({"input_size": [32, 32.5]}, r"input_size \[H, W\] of integers"),
        ({"resize_size": 2**33}, r"resize_size an integer in \[1, 16384\]"),
        ({"resize_size": 40.0}, r"resize_size an integer in \[1, 16384\]"),
        ({"mean": [0.5, float("nan"), 0.5]}, r"finite means and stds"),
    ],
)
def test_read_metadata_bounds_sizes(fields, message, tmp_path):
    path = _tiny_export(tmp_path / "m.ts", **fields)
    with pytest.raises(ValueError, match=message):
        read_metadata(path)


def test_largest_sizes_are_accepted(tmp_path):
    path = _tiny_export(tmp_path / "m.ts", input_size=[16384, 16384], resize_size=16384)
    assert read_metadata(path).resize_size == MAX_IMAGE_SIDE == 16384


@needs_runner
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_size": [10**9, 32]}, "expected input_size to be integers in [1, 16384]"),
        ({"resize_size": 2**33}, "expected resize_size to be integers in [1, 16384]"),
        ({"resize_size": 2**64}, "expected resize_size to be integers in [1, 16384]"),
    ],
)
def test_runner_bounds_metadata_sizes(fields, message, tmp_path):
    import cv2

    image = tmp_path / "a.png"
    assert cv2.imwrite(str(image), np.zeros((40, 40, 3), np.uint8))
    model = _tiny_export(tmp_path / "m.ts", **fields)
    result = _run_limited([str(RUNNER), str(model), "--image", str(image), "--threads", "1"])
    assert result.returncode == EXIT_MODEL, result.stderr
    assert message in result.stderr


@needs_runner
def test_runner_bounds_the_resize(strip_png, tmp_path):
    model = _tiny_export(tmp_path / "m.ts", input_size=[224, 224], resize_size=256)
    result = _run_limited([str(RUNNER), str(model), "--image", str(strip_png), "--threads", "1"])
    assert result.returncode == EXIT_IMAGE, result.stderr
    assert "gives 256x5120000, more than the limit of 16384 pixels per side" in result.stderr


@needs_runner
@pytest.mark.parametrize("header", [_png_header, _jpeg_header])
def test_runner_refuses_images_over_the_pixel_limit(header, tmp_path):
    path = tmp_path / ("big.png" if header is _png_header else "big.jpg")
    path.write_bytes(header(65535, 65535))
    model = _tiny_export(tmp_path / "m.ts")
    result = _run_limited([str(RUNNER), str(model), "--image", str(path), "--threads", "1"])
    assert result.returncode == EXIT_IMAGE, result.stderr
    assert "65535x65535 pixels, more than the limit of 268435456 pixels" in result.stderr


@needs_runner
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--iters", "9999999999", "expected --iters in [1, 2147483647], but got 9999999999"),
        ("--threads", "4294967297", "expected --threads in [0, 1024], but got 4294967297"),
        ("--warmup", "-1", "expected --warmup in [0, 2147483647], but got -1"),
    ],
)
def test_runner_range_checks_integer_options(option, value, message, tmp_path):
    model = _tiny_export(tmp_path / "m.ts")
    args = [str(RUNNER), str(model), "--bench", "--warmup", "0", "--profile-iters", "0"]
    result = _run_limited([*args, option, value], timeout=60)
    assert result.returncode == EXIT_USAGE, result.stderr
    assert f"deeprebirth-run: error: {message}" in result.stderr
