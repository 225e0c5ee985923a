"""int8 quantization (deeprebirth.quantize, ``deeprebirth quantize``, the job's quantize stage)
against the float model it came from.

Models (random weights): ``tiny slim`` is bvlc_googlenet (width 0.125, 32x32) branch-slimmed and
then rewritten by the exact rules, so it holds each module the exporters convert (ConvPool2d,
BranchConv2d) and the LocalResponseNorms that stay in float (streamline would remove those);
its convolution weights are re-drawn He-normal so that activations keep their scale through the
depth (the slimmed layers' Xavier init shrinks them ~4x per inception block). ``small`` has each
kind of layer the backends treat specially, in a graph that compiles in seconds: a ConvPool2d, a
BranchConv2d, one ReLU module called twice, a LocalResponseNorm, a ``ceil_mode`` max-pool whose
ceil and floor sizes differ, global pooling and a linear layer.

The bound. Each int8 layer rounds its activations to a step of (range / 255) and its weights to
(max |w| / 127): a relative error of ~1/(127 * sqrt(12)) = 0.23% (RMS) per rounding. Over the ~20
quantized layers on the longest path of the tiny slim model, independent roundings add to
~sqrt(40) * 0.23% = 1.5% of a typical activation, and the largest of a few hundred logits may be
~4 sigma off: ~6%. So: max |int8 - float| <= RTOL_INT8 = 10% of the largest |float logit|, on
fresh draws from the calibration distribution, and the int8 top-1 is the float top-1 on at least
90% of them. The bound is not loose enough to pass anything: a model calibrated on images 100x
too small (ranges 100x too narrow, everything clips) misses it (the negative control). The int8
runtimes against the reference graph they run (convert_pt2e's float arithmetic on int8-rounded
values) differ only by requantization rounding: within RTOL_KERNEL = 2% of the largest logit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from finetune_helpers import tiny_config, tiny_student
from torch import nn

import deeprebirth
import deeprebirth.io
from deeprebirth.cli import main
from deeprebirth.export import load_exported, make_portable, read_metadata
from deeprebirth.export.preprocess import eval_batch
from deeprebirth.models import bvlc_googlenet
from deeprebirth.nn import BranchConv2d, ConvPool2d
from deeprebirth.quantize import (
    QuantizeError,
    inductor_runner,
    quantize_model,
    save_quantized,
)
from deeprebirth.quantize.capture import capture_for_quantization
from deeprebirth.quantize.ceil_mode import remove_ceil_mode_pools

pytest.importorskip("executorch", reason="pip install deeprebirth[deploy]")
pytest.importorskip("torchao", reason="pip install deeprebirth[deploy]")

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

SIZE, CLASSES = 32, 10
RTOL_INT8, RTOL_KERNEL = 0.10, 0.02
SLIM_RULES = ["branch_slim", "fold_bn", "fuse_conv_pool", "merge_branches"]


def _images(count: int, seed: int, size: int = SIZE, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(count, 3, size, size, generator=generator)


def _tiny_slim() -> nn.Module:
    torch.manual_seed(0)
    teacher = bvlc_googlenet(num_classes=CLASSES, width=0.125, init="kaiming").eval()
    slim, _ = deeprebirth.slim(teacher, SLIM_RULES, torch.zeros(1, 3, SIZE, SIZE))
    kinds = {type(m) for m in slim.modules()}
    assert {BranchConv2d, ConvPool2d, nn.LocalResponseNorm} <= kinds
    with torch.no_grad():
        for parameter in slim.parameters():
            if parameter.dim() == 4:
                nn.init.kaiming_normal_(parameter, nonlinearity="relu")
    return slim.eval()


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvPool2d(3, 8, 3, padding=1, pool_kernel=2)
        self.branches = BranchConv2d.from_convs(
            [nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)], relu=False
        )
        self.relu = nn.ReLU()
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)  # 8x8 -> 4x4 (floor: 3x3)
        self.head = nn.Conv2d(16, 16, 1)
        self.classifier = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.norm(self.relu(self.branches(self.stem(x)))))
        x = self.relu(self.head(x))  # the same ReLU module, called a second time
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _small() -> nn.Module:
    torch.manual_seed(0)
    return _Small().eval()


def _weighted_layers(model: nn.Module) -> int:
    """Convolutions and linears of the float model, counted on its standard form."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in make_portable(model).modules())


def _quantized_lrn_values(graph_module: torch.fx.GraphModule) -> int:
    """How many values computed inside the LocalResponseNorm are quantized (0: it runs in
    float); asserts the graph has one."""
    inside = {
        node
        for node in graph_module.graph.nodes
        if any(
            "LocalResponseNorm2d" in str(kind)
            for _, kind in node.meta.get("nn_module_stack", {}).values()
        )
    }
    assert inside, "no LocalResponseNorm in the graph"
    quantizers = [n for n in graph_module.graph.nodes if "quantize_per" in str(n.target)]
    return sum(1 for n in quantizers if "dequantize" not in str(n.target) and n.args[0] in inside)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def tiny_slim() -> nn.Module:
    return _tiny_slim()


@pytest.fixture(scope="module")
def xnnpack_pte(tiny_slim, tmp_path_factory):
    quantized = quantize_model(tiny_slim, _images(32, seed=1), "xnnpack")
    saved = save_quantized(
        quantized, tmp_path_factory.mktemp("q") / "slim_int8.pte", {"source_model": "tiny"}
    )
    return quantized, saved


# ---- xnnpack: calibrate, convert, export .pte, reload, run -------------------------------------


def test_xnnpack_pte_runs_int8_and_stays_close_to_float(tiny_slim, xnnpack_pte):
    quantized, saved = xnnpack_pte
    layers = _weighted_layers(tiny_slim)
    assert quantized.calibration_images == 32
    assert quantized.share.int8_layers == quantized.share.layers == layers
    assert saved.delegation.fully_delegated and saved.delegation.subgraphs == 1
    assert saved.delegated_share.int8_layers == layers  # inside XNNPACK, as int8
    record = read_metadata(saved.path)
    assert record.format == "executorch" and record.rules_applied[-1] == "int8:xnnpack"
    assert record.input_size == [SIZE, SIZE] and record.source_model == "tiny"

    x = _images(16, seed=2)  # fresh draws from the calibration distribution
    with torch.no_grad():
        expected, reference = tiny_slim(x), quantized(x)
    actual = load_exported(saved.path)(x)  # the .pte, one image at a time
    assert 0 < _relative_error(reference, expected) <= RTOL_INT8
    assert _relative_error(actual, expected) <= RTOL_INT8
    assert _relative_error(actual, reference) <= RTOL_KERNEL
    assert (actual.argmax(1) == expected.argmax(1)).float().mean() >= 0.9  # top-1 kept


def test_the_bound_fails_a_badly_calibrated_model():
    """Negative control: ranges observed on images 100x too small clip every activation."""
    model, x = _small(), _images(16, seed=2, size=16)
    bad = quantize_model(model, _images(32, seed=1, size=16, scale=0.01), "xnnpack")
    with torch.no_grad():
        assert _relative_error(bad(x), model(x)) > RTOL_INT8


def test_per_tensor_weights_and_qat():
    model, x = _small(), _images(16, seed=2, size=16)
    per_tensor = quantize_model(model, _images(32, seed=1, size=16), per_channel=False)
    targets = {str(n.target) for n in per_tensor.module.graph.nodes}
    assert not any("per_channel" in t for t in targets), "per-tensor weights expected"
    assert _quantized_lrn_values(per_tensor.module) == 0
    qat = quantize_model(model, _images(16, seed=1, size=16), qat_steps=2, batch_size=8)
    assert len(qat.qat_losses) == 2 and all(map(torch.isfinite, torch.tensor(qat.qat_losses)))
    with torch.no_grad():
        expected = model(x)
        for quantized in (per_tensor, qat):
            assert quantized.share.int8_layers == _weighted_layers(model)
            assert 0 < _relative_error(quantized(x), expected) <= RTOL_INT8


# ---- x86_inductor: .pt2, torch.compile with freezing ------------------------------------------


def test_x86_inductor_pt2_compiles_to_int8_kernels_and_matches(tmp_path):
    model, x = _small(), _images(4, seed=2, size=16)
    quantized = quantize_model(model, _images(32, seed=1, size=16), "x86_inductor")
    assert _quantized_lrn_values(quantized.module) == 0
    saved = save_quantized(quantized, tmp_path / "small_int8.pt2")
    assert read_metadata(saved.path).rules_applied == ["int8:x86_inductor"]
    run = inductor_runner(saved.path, x)
    assert run.int8_kernels == _weighted_layers(model)  # oneDNN int8 conv / linear
    with torch.no_grad():
        expected, reference = model(x), quantized(x)
    actual = run(x)
    assert 0 < _relative_error(reference, expected) <= RTOL_INT8
    assert _relative_error(actual, reference) <= RTOL_KERNEL
    torch.testing.assert_close(load_exported(saved.path)(x), reference)  # eager .pt2


def test_ceil_mode_pools_are_rewritten_exactly():
    """Against ATen's ceil_mode max_pool2d, over sizes where ceil and floor differ or agree."""
    generator = torch.Generator().manual_seed(3)
    for size, kernel, stride, padding in [(8, 3, 2, 0), (7, 3, 2, 0), (9, 2, 2, 1), (5, 3, 3, 1)]:
        pool = nn.MaxPool2d(kernel, stride, padding, ceil_mode=True)
        x = torch.randn(2, 4, size, size + 1, generator=generator)
        graph = capture_for_quantization(pool, x)
        remove_ceil_mode_pools(graph)
        assert not any(
            n.target == torch.ops.aten.max_pool2d.default and n.args[-1] is True
            for n in graph.graph.nodes
        )
        torch.testing.assert_close(graph(x), pool(x), rtol=0, atol=0)


# ---- bad input: a clear error before any work --------------------------------------------------


def test_api_errors_name_the_problem():
    model = _small()
    with pytest.raises(QuantizeError, match="unknown backend 'tflite'; expected one of xnnpack"):
        quantize_model(model, _images(4, 1, 16), "tflite")
    with pytest.raises(QuantizeError, match="no calibration images"):
        quantize_model(model, [])
    with pytest.raises(QuantizeError, match=r"expected images of shape \[3, 16, 16\]"):
        quantize_model(model, _images(4, 1, 8), example_input=torch.zeros(1, 3, 16, 16))

    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x  # control flow on values: torch.export refuses

    with pytest.raises(QuantizeError, match="DataDependent cannot be exported by torch.export"):
        quantize_model(DataDependent(), _images(4, 1, 16))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "slim.pt"
    deeprebirth.io.save_model(path, _tiny_slim(), {"input_size": [SIZE, SIZE], "in_channels": 3})
    return path


def test_cli_errors_exit_2_before_any_work(model_file, tmp_path, capsys):
    out = tmp_path / "m.pte"
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(model_file), "--backend", "tflite", "--calibration", "synthetic"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    base = ["quantize", str(model_file), "--out", str(out), "--backend"]
    (tmp_path / "empty").mkdir()
    cases = {
        "holds no images": ["xnnpack", "--calibration", str(tmp_path / "empty")],
        "is not a folder, 'synthetic'": ["xnnpack", "--calibration", str(tmp_path / "none")],
        "at least 1 calibration image": [
            *("xnnpack", "--calibration", "synthetic", "--calibration-images", "0")
        ],
        "per channel only": ["x86_inductor", "--per-tensor", "--calibration", "synthetic"],
        "cannot be exported by torch.export at input [1, 3, 8, 8]": [
            *("xnnpack", "--calibration", "synthetic", "--input-size", "8", "8")
        ],
    }
    for message, arguments in cases.items():
        assert main([*base, *arguments]) == 2, message
        err = capsys.readouterr().err
        assert message in err and err.startswith("deeprebirth quantize: error:"), err
        assert not out.exists()


def test_cli_writes_a_pt2_that_loads(model_file, tmp_path, capsys):
    import cv2

    folder, out = tmp_path / "images", tmp_path / "slim_int8.pt2"
    (folder / "class").mkdir(parents=True)
    generator = torch.Generator().manual_seed(4)
    for i in range(10):  # read back through the model file's evaluation transform
        pixels = torch.randint(0, 256, (80, 96, 3), generator=generator, dtype=torch.uint8)
        cv2.imwrite(str(folder / "class" / f"{i}.png"), pixels.numpy())
    arguments = ["--calibration", str(folder), "--calibration-images", "8", "--out", str(out)]
    assert main(["quantize", str(model_file), "--backend", "x86_inductor", *arguments]) == 0
    printed = capsys.readouterr().out
    assert f"calibration: 8 images of {folder}" in printed
    layers = _weighted_layers(_tiny_slim())
    assert f"int8: {layers}/{layers} conv/linear layers (100%)" in printed
    record = read_metadata(out)
    assert record.format == "pt2" and record.rules_applied[-1] == "int8:x86_inductor"
    held_out = [folder / "class" / f"{i}.png" for i in (8, 9)]  # sorted after the 8 used
    x = eval_batch(held_out, record)
    model, _ = deeprebirth.io.load_model(model_file)
    with torch.no_grad():
        assert _relative_error(load_exported(out)(x), model.eval()(x)) <= RTOL_INT8


# ---- the finetune job's quantize stage ---------------------------------------------------------


def test_job_quantize_stage_writes_and_evaluates_the_int8_student(tmp_path):
    from deeprebirth.train.config import ConfigError
    from deeprebirth.train.data import build_datasets
    from deeprebirth.train.job import run_job

    with pytest.raises(ConfigError, match="quantize.backend' expects one of"):
        tiny_config(tmp_path / "bad", "quantize.enabled=true", "quantize.backend=tflite")
    cfg = tiny_config(
        tmp_path / "run",
        "quantize.enabled=true",
        "quantize.backend=x86_inductor",
        "quantize.calibration_images=16",
        "quantize.teacher=true",
    )
    result = run_job(cfg, student=tiny_student)
    record, teacher_record = result.history[-2:]
    assert record["label"].startswith("student int8 (x86_inductor")
    assert teacher_record["label"].startswith("teacher int8 (x86_inductor")
    assert (result.output_dir / "teacher_int8.pt2").is_file()
    # The history row is the int8 model's accuracy on the validation set, measured again here.
    x, y = build_datasets(cfg).val.tensors
    logits = load_exported(result.output_dir / "student_int8.pt2")(x)
    assert record["top1"] == pytest.approx(100 * (logits.argmax(1) == y).float().mean().item())
    assert "student int8" in (result.output_dir / "report.md").read_text()
    lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["label"] for line in lines[-2:]] == [
        r["label"] for r in (record, teacher_record)
    ]
