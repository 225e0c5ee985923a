"""Side-by-side runtime profiles on tiny models: categories against the modules that ran, the
ONNX Runtime trace parser against a closed-form trace, the page against its own totals."""

from __future__ import annotations

import doctest
import importlib.util
import re

import pytest
import torch
from torch import nn

import deeprebirth
from deeprebirth.bench import SuiteConfig, run_suite, runtime_profiles, zoo
from deeprebirth.bench.runtime_profiles import (
    CATEGORIES,
    RuntimeProfile,
    aggregate_kernels,
    kernel_category,
    onnxruntime_kernel_records,
    profile_eager,
)

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
HAS_ONNXRUNTIME = importlib.util.find_spec("onnxruntime") is not None
HAS_EXECUTORCH = importlib.util.find_spec("executorch") is not None


class ConvConcat(nn.Module):
    """Two convolution branches concatenated: 2 convolutions, 2 ReLUs, 1 concat per forward."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(channels, 4, 3, padding=1), nn.Conv2d(channels, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)


def tiny_net(num_classes: int = 1000) -> nn.Module:
    """A stem (conv, ReLU, max-pool: ``conv_pool`` once deployed), two concatenated branches
    (``branch_conv``) and a classifier: a model of the benchmark zoo in a second."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        ConvConcat(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def _conv_relu() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU()).eval()


def _calls(profile: RuntimeProfile) -> dict[str, float]:
    calls = dict.fromkeys(CATEGORIES, 0.0)
    for kernel in profile.kernels:
        calls[kernel.category] += kernel.calls
    return calls


def test_docstring_examples():
    result = doctest.testmod(runtime_profiles, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_kernel_category_names_every_runtime_alike():
    expected = {
        "convolution": [
            "aten::conv2d",
            "aten::mkldnn_convolution",
            "mkldnn::_convolution_pointwise",
            "deeprebirth::small_conv2d_cat",
            "deeprebirth::conv_pool",
            "deeprebirth::branch_conv",
            "Convolution",
            "FusedConv",
        ],
        "concatenation": ["aten::cat", "Concat"],
        "layout copies": ["aten::copy_", "aten::contiguous", "aten::to_dense", "ReorderOutput"],
        "weight checks": ["deeprebirth::bitwise_equal"],
        "pooling": ["aten::max_pool2d", "MaxPool", "ReduceMean", "aten::adaptive_avg_pool2d"],
        "activation": ["aten::relu_", "Relu"],
        "linear": ["aten::linear", "aten::addmm", "FullyConnected", "Gemm"],
        "elementwise": ["aten::add_", "Eltwise"],
        "other": ["Convert", "aten::dropout"],
    }
    for category, names in expected.items():
        for name in names:
            assert kernel_category(name) == category, name


def test_eager_profile_categories_follow_the_modules_that_ran():
    x = torch.randn(2, 3, 12, 12)
    profile = profile_eager(_conv_relu(), x, forwards=2)
    calls, times = _calls(profile), profile.category_ms()
    assert calls["convolution"] == 2 and calls["activation"] == 2  # two Conv2d, two ReLU
    assert times["convolution"] > 0 and times["concatenation"] == 0.0
    assert all(ms >= 0 for ms in times.values())
    assert sum(times.values()) <= profile.forward_ms and profile.outside_ms >= 0
    branches = profile_eager(ConvConcat().eval(), x, forwards=2)
    assert _calls(branches)["concatenation"] == 1 and _calls(branches)["convolution"] == 2
    assert branches.category_ms()["concatenation"] > 0


def test_deployed_googlenet_profile_fits_in_its_forward():
    model = zoo.build_variant(zoo.in_form(zoo.GOOGLENET_SLIM, "deployed"), 64, width=0.125)
    profile = profile_eager(model, torch.randn(1, 3, 64, 64), forwards=2)
    times = profile.category_ms()
    assert all(ms >= 0 for ms in times.values())
    assert sum(times.values()) == pytest.approx(profile.kernel_ms)
    assert profile.kernel_ms <= profile.forward_ms
    ops = [k.name for k in profile.kernels if k.name.startswith("deeprebirth::")]
    # every deeprebirth operator is a convolution but the pooling of InferenceMaxPool2d and the
    # classifier's InferenceLinear
    others = {"deeprebirth::max_pool2d": "pooling", "deeprebirth::linear": "linear"}
    assert set(others) < set(ops)
    assert all(kernel_category(name) == others.get(name, "convolution") for name in ops)


def test_aggregate_kernels_means_per_forward():
    records = [("Conv", "convolution", 1.0), ("Relu", "activation", 0.5)] * 3
    records.append(("Conv", "convolution", 2.0))
    kernels = aggregate_kernels(records, forwards=2)
    assert [(k.name, k.ms, k.calls) for k in kernels] == [("Conv", 2.5, 2.0), ("Relu", 0.75, 1.5)]


def test_onnxruntime_trace_records_skip_warmup_runs():
    def node(op: str, ts: int, dur: int) -> dict:
        return {"cat": "Node", "name": f"{op}_{ts}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op}}  # fmt: skip

    trace = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        node("Conv", 10, 50),  # warm-up run: left out
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        node("Conv", 210, 40),
        {"cat": "Node", "name": "Conv_fence_before", "ts": 250, "dur": 5, "args": {}},
        node("Concat", 260, 20),
        {"cat": "Session", "name": "model_run", "ts": 400, "dur": 80},
        node("Conv", 410, 30),
    ]
    walls, records = onnxruntime_kernel_records(trace, skip_runs=1)
    assert walls == [0.1, 0.08]
    assert records == [
        ("Conv", "convolution", 0.04),
        ("Concat", "concatenation", 0.02),
        ("Conv", "convolution", 0.03),
    ]


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_openvino_counters_show_each_convolution():
    from deeprebirth.export.openvino import to_openvino

    x = torch.randn(1, 3, 16, 16)
    profile = runtime_profiles.profile_openvino(to_openvino(_conv_relu(), x), x, forwards=3)
    convolutions = [k for k in profile.kernels if k.name.startswith("Convolution")]
    assert convolutions and all(k.category == "convolution" for k in convolutions)
    assert sum(k.calls for k in convolutions) == 2  # one node per Conv2d
    assert all(k.ms >= 0 for k in profile.kernels)
    assert profile.kernel_ms <= profile.forward_ms


@pytest.mark.skipif(not HAS_ONNXRUNTIME, reason="onnxruntime is not installed")
def test_onnxruntime_profile_counts_the_graph_convolutions(tmp_path):
    x = torch.randn(1, 3, 16, 16)
    path = deeprebirth.export(ConvConcat().eval(), x, format="onnx", out=tmp_path / "m.onnx")
    profile = runtime_profiles.profile_onnxruntime(path, x, forwards=2)
    calls = _calls(profile)
    assert calls["convolution"] == 2 and calls["concatenation"] == 1
    assert profile.kernel_ms <= profile.forward_ms
    assert not list(tmp_path.glob("*.json"))  # the trace is removed once read


@pytest.mark.skipif(
    not (HAS_OPENVINO and HAS_ONNXRUNTIME and HAS_EXECUTORCH), reason="deploy extra missing"
)
def test_profiles_page_lists_every_runtime_with_consistent_totals(tmp_path):
    torch.set_num_threads(1)
    deeprebirth.models.register_model("tiny_profiles_net", tiny_net)
    config = SuiteConfig(
        out=tmp_path,
        image_size=32,
        batches=(1,),
        repeats=1,
        warmup=0,
        profile_forwards=1,
        sections=("profiles",),
        deployed_models=[zoo.ModelSpec("Tiny", "tiny_profiles_net")],
    )
    (path,) = run_suite(config)
    text = path.read_text()
    assert path.name == "runtime_profiles.md" and text.splitlines()[4].startswith("Machine: ")
    assert "EXECUTORCH_ENABLE_EVENT_TRACER" in text
    side = text.split("### ")[1]
    header = re.search(r"^\| category \| (.*) \|$", side, re.MULTILINE).group(1).split(" | ")
    assert header == [
        "deeprebirth deployed, eager",
        "OpenVINO f32",
        "ONNX Runtime",
        "ExecuTorch XNNPACK 1T",
    ]
    rows = {
        line.split(" | ")[0].strip("| "): line.strip("|").split(" | ")[1:]
        for line in side.splitlines()
        if line.startswith("| ") and not line.startswith("| category")
    }
    for column in range(3):  # the runtimes with kernels: categories add up to all kernels
        ms = [float(cells[column].split()[0]) for name, cells in rows.items() if name in CATEGORIES]
        total = float(rows["**all kernels**"][column].split()[0])
        assert sum(ms) == pytest.approx(total, abs=1e-3 * len(ms))
    assert rows["kernels per forward"][3].strip() == "1 program"
    for runtime in header[:3]:
        assert f"batch 1: {runtime}\n" in text  # its own table
