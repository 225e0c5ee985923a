"""Export formats and the C++ runner agree with the eager model.

Models (random weights, 96x96 crop): ``googlenet`` (bvlc_googlenet, width 0.25);
``slim_googlenet``, the output of ``deeprebirth.slim`` with the paper's rules (streamline +
branch_slim) and the exact ones (merge_branches puts one BranchConv2d in each Inception module);
``googlenet_exact_rules``, the exact rules only (fuse_conv_pool turns conv1 into a ConvPool2d,
where the paper's streamline removes its pool); ``resnet50`` (torchvision, random BatchNorm
statistics). Each model is built and exported once per module (:class:`export_cache.ExportCache`); the tests
share the files.

Checked: eager PyTorch, the TorchScript file in Python, the TorchScript file in ``deeprebirth-run``
(on the runner's own preprocessed input, read back with ``--dump-input``) and ONNX Runtime give the
same logits (atol 1e-4) for googlenet, slim_googlenet and resnet50 (googlenet_exact_rules: all but
ONNX, which is always portable); portable and native exports agree; the runner's OpenCV
preprocessing matches :func:`deeprebirth.export.preprocess.eval_transform` within 1/255 after
normalisation on JPEG/PNG files written here (RGB, grayscale, alpha, 16-bit); every bad input gives
its message and exit code. The C++ parts are skipped when the runner is not built
(``cmake --build build/cmake``).
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from export_cache import ExportCache
from torch import nn

import deeprebirth
import deeprebirth.io
from deeprebirth.export import ExportMetadata, make_portable, read_metadata, uses_deeprebirth_ops
from deeprebirth.export.preprocess import eval_batch
from deeprebirth.models import build_model, bvlc_googlenet
from deeprebirth.ops import BranchConv2d, ConvPool2d

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated"),
    pytest.mark.filterwarnings(r"ignore:.*lite.*deprecated"),
    pytest.mark.filterwarnings("ignore:optimize_for_mobile is unavailable"),
    pytest.mark.filterwarnings("ignore:torchvision's C\\+\\+ operators"),
]

ROOT = Path(__file__).resolve().parents[2]
CROP, RESIZE, CLASSES, ATOL = 96, 110, 10, 1e-4
# The paper's slimming (GoogLeNet-Slim) followed by the exact rules, as scripts/bench_models.py.
PAPER_RULES = ["streamline", "branch_slim", "fold_bn", "fuse_conv_pool", "merge_branches"]
EXACT_RULES = ["fuse_conv_pool", "merge_branches"]
# Exit codes of deeprebirth-run (csrc/runner/errors.h).
EXIT_USAGE, EXIT_MODEL, EXIT_IMAGE, EXIT_BATCH, EXIT_INFERENCE = 2, 3, 4, 5, 6


def _runner_binary() -> Path | None:
    found = sorted((ROOT / "build").glob("**/csrc/runner/deeprebirth-run"))
    return found[0] if found else None


RUNNER = _runner_binary()
needs_runner = pytest.mark.skipif(
    RUNNER is None, reason="deeprebirth-run is not built (cmake --build build/cmake)"
)


# ---- models -------------------------------------------------------------------------------


def _example() -> torch.Tensor:
    return torch.randn(2, 3, CROP, CROP, generator=torch.Generator().manual_seed(1))


def _googlenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("bvlc_googlenet", num_classes=CLASSES, width=0.25)


def _slimmed_googlenet(rules: list[str]) -> nn.Module:
    """``deeprebirth.slim`` of :func:`_googlenet` (new layers Xavier-initialised, not trained)."""
    torch.manual_seed(0)
    slim_model, _report = deeprebirth.slim(_googlenet(), rules, _example())
    return slim_model.eval()


def _resnet50() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("torchvision:resnet50", num_classes=CLASSES)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):  # random statistics: BN folding is exercised
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                if name.endswith("bn3"):
                    # Small residual-branch scales, as trained ResNets have: without them random
                    # activations double with each of the 16 blocks (logits ~100, where float32
                    # rounding alone reaches 1e-4).
                    module.weight.uniform_(0.1, 0.3)
    return model.eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "googlenet": _googlenet,
    "slim_googlenet": lambda: _slimmed_googlenet(PAPER_RULES),
    "googlenet_exact_rules": lambda: _slimmed_googlenet(EXACT_RULES),
    "resnet50": _resnet50,
}
# What each model must hold so that its native and portable exports differ.
DEEPREBIRTH_MODULES = {
    "slim_googlenet": {BranchConv2d},
    "googlenet_exact_rules": {ConvPool2d, BranchConv2d},
}
METADATA = {
    "resize_size": RESIZE,
    "class_names": [f"class_{i}" for i in range(CLASSES)],
    "rules_applied": [],
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("exports"), MODELS, _example, METADATA)


# ---- images -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Real image files of every kind the transform converts, written with OpenCV."""
    import cv2

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)

    def smooth(height: int, width: int, channels: int) -> np.ndarray:
        # Natural-looking content: low-frequency gradients plus noise.
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        base = np.stack([np.sin(3 * x + c) * np.cos(2 * y - c) for c in range(channels)], -1)
        return (base + 0.2 * rng.standard_normal((height, width, channels)) + 1) / 2.4

    files = {
        "rgb.jpg": (smooth(150, 200, 3) * 255).clip(0, 255).astype(np.uint8),
        "rgb.png": (smooth(210, 140, 3) * 255).clip(0, 255).astype(np.uint8),
        "gray.png": (smooth(128, 160, 1)[..., 0] * 255).clip(0, 255).astype(np.uint8),
        "alpha.png": (smooth(120, 130, 4) * 255).clip(0, 255).astype(np.uint8),
        "deep16.png": (smooth(140, 120, 3) * 65535).clip(0, 65535).astype(np.uint16),
        "small.jpg": (smooth(60, 80, 3) * 255).clip(0, 255).astype(np.uint8),  # upscaled
    }
    paths = {}
    for name, pixels in files.items():
        paths[name] = folder / name
        assert cv2.imwrite(str(paths[name]), pixels)
    return paths


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUNNER), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _runner_logits_and_input(
    model_file: Path, image_paths: list[Path], dump: Path, options: tuple[str, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs deeprebirth-run with --print-logits and --dump-input; returns (logits, input).

    One thread: OpenMP threads that spin on a shared, busy CPU made these runs ~7x slower.
    """
    args = [str(model_file), "--print-logits", "--dump-input", str(dump), "--threads", "1"]
    args += list(options)
    for path in image_paths:
        args += ["--image", str(path)]
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    rows = [line.split()[1:] for line in result.stdout.splitlines() if "logits" in line]
    logits = torch.tensor([[float(v) for v in row] for row in rows])
    batch = torch.from_numpy(np.fromfile(dump, dtype=np.float32).copy())
    return logits, batch.reshape(len(image_paths), 3, CROP, CROP)


# ---- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["googlenet", "slim_googlenet", "resnet50"])
def test_python_formats_give_the_eager_logits(name, exported):
    """Eager == TorchScript (Python) == ONNX Runtime, atol 1e-4; the metadata travels along."""
    import onnxruntime

    model, example = exported.model(name), _example()
    ts_file, onnx_file = exported.file(name, "torchscript"), exported.file(name, "onnx")
    with torch.no_grad():
        expected = model(example)
        scripted = torch.jit.load(str(ts_file))(example)
    torch.testing.assert_close(scripted, expected, atol=ATOL, rtol=0)

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_logits), expected, atol=ATOL, rtol=0)

    assert read_metadata(ts_file).source_model == name
    assert read_metadata(onnx_file).portable
    assert read_metadata(ts_file).portable == (name not in DEEPREBIRTH_MODULES)


@needs_runner
@pytest.mark.parametrize("name", list(MODELS))
def test_runner_gives_the_eager_logits(name, exported, images, tmp_path):
    """The TorchScript file in deeprebirth-run == eager PyTorch on the runner's input, atol 1e-4:
    as saved, with LibTorch's MKLDNN rewrites, and (portable files) with the oneDNN Graph fuser."""
    model, ts_file = exported.model(name), exported.file(name, "torchscript")
    paths = [images["rgb.jpg"], images["gray.png"]]
    modes = [(), ("--optimize",)] + (
        [("--onednn-graph",)] if read_metadata(ts_file).portable else []
    )
    for options in modes:
        logits, runner_input = _runner_logits_and_input(ts_file, paths, tmp_path / "in", options)
        with torch.no_grad():
            torch.testing.assert_close(logits, model(runner_input), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(DEEPREBIRTH_MODULES))
def test_portable_exports_match_native(name, exported, tmp_path):
    """A surgery output holds deeprebirth modules; its portable rewrite has none and gives the
    same logits, in eager PyTorch and as TorchScript; torch.export keeps the ops (native)."""
    slim, example = exported.model(name), _example()
    held = {type(m) for m in slim.modules()} & {ConvPool2d, BranchConv2d}
    assert held == DEEPREBIRTH_MODULES[name]
    portable = make_portable(slim)
    assert uses_deeprebirth_ops(slim) and not uses_deeprebirth_ops(portable)
    with torch.no_grad():
        expected = slim(example)
        torch.testing.assert_close(portable(example), expected, atol=1e-5, rtol=0)
        native_ts = exported.file(name, "torchscript")
        portable_ts = deeprebirth.export(
            slim, example, "torchscript", portable=True, out=tmp_path / "portable.ts"
        )
        assert read_metadata(portable_ts).portable and not read_metadata(native_ts).portable
        for path, portable_flag in ((native_ts, False), (portable_ts, True)):
            loaded = torch.jit.load(str(path))
            assert ("deeprebirth::" in str(loaded.graph)) != portable_flag
            torch.testing.assert_close(loaded(example), expected, atol=ATOL, rtol=0)

        from deeprebirth.export.pt2 import load_pt2

        program, meta = load_pt2(exported.file(name, "pt2"))
        assert not meta.portable and meta.format == "pt2"
        assert "deeprebirth" in str(program.graph)
        torch.testing.assert_close(program.module()(example), expected, atol=ATOL, rtol=0)


def test_pt2_export_from_one_image_has_a_dynamic_batch():
    """torch.export specialises size-1 dims; the exporter still gives a program for any batch."""
    from deeprebirth.export.pt2 import export_program
    from deeprebirth.models import bvlc_googlenet

    torch.manual_seed(9)
    model = bvlc_googlenet(num_classes=10, width=0.125, in_channels=1).eval()
    program = export_program(model, torch.randn(1, 1, 32, 32))
    for batch in (1, 3):
        x = torch.randn(batch, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=0)


def test_mobile_export_loads_and_matches(exported):
    """The lite-interpreter file (or the TorchScript fallback) gives the eager logits."""
    slim, example = exported.model("slim_googlenet"), _example()
    path = exported.file("slim_googlenet", "mobile")
    meta = read_metadata(path)
    if meta.format == "mobile":
        from torch.jit.mobile import _load_for_lite_interpreter

        loaded = _load_for_lite_interpreter(str(path))
    else:
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        expected = slim(example)
        torch.testing.assert_close(loaded(example), expected, atol=ATOL, rtol=0)
    if RUNNER is not None:  # LibTorch reads the lite file too
        result = _run(str(path), "--bench", "--iters", "1", "--warmup", "0", "--profile-iters", "0")
        assert result.returncode == 0, result.stderr


class _NotScriptable(nn.Module):
    """A model TorchScript cannot compile (``*args``), so the export traces it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.conv(inputs[0]).mean((2, 3))


def test_unscriptable_models_are_traced(tmp_path):
    model = _NotScriptable().eval()
    example = torch.randn(2, 3, 16, 16)
    with pytest.warns(UserWarning, match="tracing instead"):
        path = deeprebirth.export(model, example, "torchscript", out=tmp_path / "t.ts")
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(example), model(example))


def test_channels_last_packed_model_exports_from_a_batch_of_one(tmp_path):
    """A model trained in channels_last (and packed for CPU) exports from a one-image example
    with a dynamic batch: ONNX Runtime and TorchScript then match eager on three images."""
    import onnxruntime

    model, _ = deeprebirth.slim(_googlenet().eval(), ["fuse_conv_pool", "pack_conv"], _example())
    model = model.eval().to(memory_format=torch.channels_last)
    one = _example()[:1].contiguous(memory_format=torch.channels_last)
    three = torch.randn(3, 3, CROP, CROP, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(three)
    onnx_file = deeprebirth.export(model, one, "onnx", out=tmp_path / "m.onnx", metadata=METADATA)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: three.numpy()})
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=ATOL, rtol=0)
    ts_file = deeprebirth.export(
        model, one, "torchscript", out=tmp_path / "m.ts", metadata=METADATA
    )
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts_file))(three), expected, atol=ATOL, rtol=0)


def test_metadata_rejects_bad_records():
    with pytest.raises(ValueError, match="resize_size"):
        ExportMetadata(input_size=[96, 96], resize_size=50)
    with pytest.raises(ValueError, match="format"):
        deeprebirth.export(nn.Linear(2, 2), torch.randn(1, 3, 8, 8), format="tflite")
    record = ExportMetadata.build(
        torch.randn(1, 3, 64, 80), {"source": "g", "rules": ["a"], "x": 1}
    )
    assert record.input_size == [64, 80] and record.source_model == "g"
    assert ExportMetadata.from_json(record.to_json()) == record


@needs_runner
def test_runner_preprocessing_matches_python(images, exported, tmp_path):
    """OpenCV in C++ == the Python eval transform (max abs diff <= 1/255 after normalisation).

    Grayscale, alpha and 16-bit files are converted (exit code 0), not rejected.
    """
    ts_file = exported.file("googlenet", "torchscript")
    paths = list(images.values())
    _, runner_input = _runner_logits_and_input(ts_file, paths, tmp_path / "in.bin")
    expected = eval_batch(paths, read_metadata(ts_file))
    assert runner_input.shape == expected.shape == (len(paths), 3, CROP, CROP)
    worst = (runner_input - expected).abs().amax(dim=(1, 2, 3))
    assert worst.max().item() <= 1 / 255, dict(
        zip([p.name for p in paths], worst.tolist(), strict=True)
    )
    # The 16-bit image keeps its depth (a conversion to 8 bits first would differ by ~1/255).
    assert worst[paths.index(images["deep16.png"])].item() < 1e-4


@needs_runner
def test_runner_top_k_and_bench(images, exported):
    ts_file = exported.file("googlenet", "torchscript")
    result = _run(str(ts_file), "--image", str(images["rgb.jpg"]), "--topk", "3")
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if "class_" in line]) == 3
    result = _run(
        str(ts_file),
        "--bench",
        "--batch",
        "2",
        "--warmup",
        "1",
        "--iters",
        "3",
        "--profile-iters",
        "1",
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr
    for field in ("p50", "p90", "p99", "images/s", "peak RSS", "tensor ops", "non-tensor ops"):
        assert field in result.stdout


@needs_runner
def test_runner_bad_inputs_give_messages_and_exit_codes(images, exported, tmp_path):
    model_file = exported.file("googlenet", "torchscript")
    onnx_file = exported.file("googlenet", "onnx")
    native = exported.file("slim_googlenet", "torchscript")  # holds deeprebirth operators
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n")
    truncated = tmp_path / "truncated.ts"
    truncated.write_bytes(model_file.read_bytes()[:5000])
    checkpoint = tmp_path / "checkpoint.pt"
    deeprebirth.io.save_model(checkpoint, _googlenet())
    no_meta = tmp_path / "plain.ts"
    torch.jit.save(torch.jit.script(nn.Conv2d(3, 4, 3)), str(no_meta))
    one_channel = tmp_path / "gray.ts"  # its record says 3 channels, but it takes 1
    record = ExportMetadata(input_size=[16, 16], resize_size=18).to_json()
    torch.jit.save(
        torch.jit.script(nn.Conv2d(1, 4, 3)), str(one_channel), {"deeprebirth.json": record}
    )
    not_image = tmp_path / "fake.jpg"
    not_image.write_bytes(b"\xff\xd8 definitely not a jpeg")
    image = str(images["rgb.jpg"])
    cases = [
        ((str(tmp_path / "missing.ts"), "--image", image), EXIT_MODEL, "file not found"),
        ((str(empty), "--image", image), EXIT_MODEL, "file is empty"),
        ((str(text), "--image", image), EXIT_MODEL, "not a TorchScript model"),
        ((str(onnx_file), "--image", image), EXIT_MODEL, "ONNX files run in ONNX Runtime"),
        ((str(truncated), "--image", image), EXIT_MODEL, "corrupt or not a TorchScript model"),
        ((str(checkpoint), "--image", image), EXIT_MODEL, "corrupt or not a TorchScript model"),
        ((str(no_meta), "--image", image), EXIT_MODEL, "carries no deeprebirth.json"),
        ((str(model_file), "--image", str(tmp_path / "no.jpg")), EXIT_IMAGE, "file not found"),
        ((str(model_file), "--image", str(empty)), EXIT_IMAGE, "file is empty"),
        ((str(model_file), "--image", str(not_image)), EXIT_IMAGE, "not a readable image"),
        ((str(model_file), "--bench", "--batch", "100000000"), EXIT_BATCH, "does not fit"),
        ((str(one_channel), "--image", image), EXIT_INFERENCE, "1-image batch: RuntimeError:"),
        ((str(native), "--bench", "--onednn-graph"), EXIT_MODEL, "needs a portable export"),
        ((str(model_file),), EXIT_USAGE, "expected --image"),
        ((str(model_file), "--bench", "--optimize", "--onednn-graph"), EXIT_USAGE, "exclude"),
        ((str(model_file), "--bench", "--iters", "0"), EXIT_USAGE, "--iters"),
        ((str(model_file), "--bench", "--batch", "two"), EXIT_USAGE, "--batch to be an integer"),
    ]
    for args, code, message in cases:
        result = _run(*args)
        assert (result.returncode, message in result.stderr) == (code, True), (args, result.stderr)


def test_cli_export_and_its_errors(tmp_path, capsys):
    from deeprebirth.cli import main

    checkpoint = tmp_path / "g.pt"
    deeprebirth.io.save_model(
        checkpoint, _googlenet(), {"source_model": "bvlc_googlenet", "input_size": [CROP, CROP]}
    )
    out = tmp_path / "g.ts"
    assert (
        main(
            ["export", str(checkpoint), "--format", "torchscript", "--portable", "--out", str(out)]
        )
        == 0
    )
    meta = read_metadata(out)
    assert (meta.source_model, meta.input_size, meta.format) == (
        "bvlc_googlenet",
        [96, 96],
        "torchscript",
    )
    assert meta.portable
    capsys.readouterr()

    assert main(["export", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x.ts")]) == 2
    assert "model file not found" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"garbage")
    assert main(["export", str(corrupt), "--out", str(tmp_path / "x.ts")]) == 2
    assert "not a readable deeprebirth model file" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    assert main(["export", str(foreign), "--out", str(tmp_path / "x.ts")]) == 2
    assert "not a deeprebirth model file" in capsys.readouterr().err


def test_flattened_model_exports_to_torchscript_without_warnings(tmp_path):
    """torch.fx.GraphModule's attribute annotations make TorchScript warn on every scripting."""
    model = bvlc_googlenet(num_classes=10, width=0.125, in_channels=1).eval()
    flat = deeprebirth.surgery.flatten_for_inference(model)
    x = torch.randn(1, 1, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = deeprebirth.export(flat, x, format="torchscript", out=tmp_path / "flat.ts")
    assert [str(w.message) for w in caught] == []
    torch.testing.assert_close(torch.jit.load(str(path))(x), model(x))
