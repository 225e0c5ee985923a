"""The benchmark suite on tiny models: counts against closed forms, profiles against an
independent reading of the profiler, tables and PNGs as written (no timed assertions)."""

from __future__ import annotations

import doctest
import importlib.util
import math
import os
import re
import statistics
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import deeprebirth
from deeprebirth.bench import (
    SECTIONS,
    SuiteConfig,
    achieved_gflops,
    build_runtime,
    costs,
    is_tensor_op,
    max_batch_within,
    model_costs,
    peak_tensor_bytes,
    profile_forward,
    profiling,
    roofline,
    run_suite,
    runtimes,
    tables,
    timing,
    zoo,
)
from deeprebirth.bench.context import BenchContext
from deeprebirth.bench.timing import RUNTIME_SETTLE_MS, Timing
from deeprebirth.cli import build_parser
from deeprebirth.commands.bench import config_from_args

TINY = {"bvlc_googlenet": {"width": 0.125}}
HAS_DEPLOY = bool(importlib.util.find_spec("executorch") and importlib.util.find_spec("openvino"))
# The "peers" page's portable runtimes in the tiny run: ExecuTorch at 1 and 2 threads interleaved
# (each resize of its process-wide pool frees the pool loaded methods hold), when the deploy
# extra is installed. (OpenVINO's shape inference refuses the 32x32 model's last pools, whose
# windows exceed the 1x1 input: test_openvino_runtimes_give_eager_outputs_per_batch.)
DEPLOY_PEERS = ("eager_channels_last",) + (("executorch_1t", "executorch_2t") if HAS_DEPLOY else ())
# The latency page's int8 table: one fp32 runtime and its int8 form (a run of its own: in the
# tiny run's two batches and every section, int8 added minutes).
INT8_PAIR = ("executorch_1t", "executorch_int8_1t")
SIZE = 32


def _tiny_config(out: Path, **overrides) -> SuiteConfig:
    settings = dict(
        out=out,
        image_size=SIZE,
        batches=(1, 2),
        repeats=1,
        warmup=0,
        profile_forwards=1,
        gemm_size=64,
        copy_mib=1,
        peak_conv_batch=1,
        non_tensor_models=[zoo.GOOGLENET, zoo.GOOGLENET_SLIM],
        layer_time_models=[zoo.GOOGLENET],
        latency_models=[zoo.GOOGLENET, zoo.GOOGLENET_SLIM],
        peer_pairs=[(zoo.GOOGLENET, zoo.GOOGLENET_SLIM)],
        latency_runtimes=("eager", "eager_channels_last"),
        peer_runtimes=("eager", "eager_channels_last"),  # TorchScript: see the runtimes doctest
        deployed_models=[zoo.GOOGLENET_SLIM],
        deployed_runtimes=("eager", "torchscript", "torchscript_onednn"),
        portable_runtimes=DEPLOY_PEERS,
        model_kwargs=TINY,
        # the profiles page has its own tests (test_runtime_profiles.py); it would add a minute
        sections=tuple(section for section in SECTIONS if section != "profiles"),
    )
    settings.update(overrides)
    return SuiteConfig(**settings)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[BenchContext, list[Path]]:
    """The whole suite once on tiny models: its context (models, timings) and written files."""
    torch.set_num_threads(2)
    context = BenchContext(_tiny_config(tmp_path_factory.mktemp("results")))
    return context, run_suite(context.config, context)


def _tiny_googlenet() -> nn.Module:
    return deeprebirth.models.bvlc_googlenet(width=0.125).eval()


def _per_round_median(baseline: Timing, timing: Timing) -> float:
    """The median over rounds of baseline / timing, both timed in the same interleaved rounds."""
    assert baseline.rounds == timing.rounds and len(baseline.samples) == len(timing.samples)
    return statistics.median(a / b for a, b in zip(baseline.samples, timing.samples, strict=True))


@pytest.mark.parametrize("module", [profiling, tables, costs, roofline, runtimes, timing])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize(
    "conv, size",
    [
        (nn.Conv2d(3, 8, 3), 10),
        (nn.Conv2d(4, 6, (3, 5), stride=2, padding=(1, 2)), 17),
        (nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False), 9),
    ],
)
def test_macs_and_params_of_a_conv_match_the_closed_form(conv, size):
    model = nn.Sequential(conv).eval()
    result = model_costs(model, size, in_channels=conv.in_channels)
    kh, kw = conv.kernel_size
    out_h = (size + 2 * conv.padding[0] - kh) // conv.stride[0] + 1
    out_w = (size + 2 * conv.padding[1] - kw) // conv.stride[1] + 1
    macs = conv.out_channels * out_h * out_w * (conv.in_channels // conv.groups) * kh * kw
    params = conv.weight.numel() + (conv.out_channels if conv.bias is not None else 0)
    assert result.macs == macs
    assert result.params == params
    assert result.weight_bytes == 4 * params
    assert result.act_bytes == 4 * conv.out_channels * out_h * out_w
    assert result.file_bytes > 4 * params  # the tensors plus torch.save's container
    assert result.gflop == pytest.approx(2 * macs / 1e9)


def test_max_batch_within_budget_is_the_linear_fit():
    # peak(b) = 10 MiB + 3 MiB * b, weights 100 MiB, budget 1 GiB -> floor((1024 - 110) / 3)
    mib = 2**20
    peaks = {1: 13 * mib, 8: 34 * mib}
    assert max_batch_within(1024 * mib, 100 * mib, peaks) == math.floor((1024 - 110) / 3)
    assert max_batch_within(50 * mib, 100 * mib, peaks) == 0
    assert max_batch_within(1024 * mib, 0, {1: 5, 4: 5}) is None
    with pytest.raises(ValueError, match="two batch sizes"):
        max_batch_within(1024, 0, {1: 5})


def test_peak_memory_is_the_most_live_tensor_bytes():
    n = 1 << 20
    assert peak_tensor_bytes(lambda: torch.ones(n)) == 4 * n
    # ones(n) and ones(n) + 1 are alive together (plus a few bytes of scalars)
    assert 8 * n <= peak_tensor_bytes(lambda: (torch.ones(n) + 1).sum()) < 8 * n + 64
    kept = torch.ones(n)  # alive before the call: not counted
    assert peak_tensor_bytes(lambda: kept.add_(1)) < 64  # the scalar 1 only
    conv = nn.Conv2d(3, 8, 3, padding=1).eval()
    peaks = costs.measure_peak_memory(conv, 16, (1, 3))
    assert peaks[1] >= 4 * 8 * 16 * 16 and peaks[3] >= 3 * 4 * 8 * 16 * 16


def test_roofline_formulas():
    assert achieved_gflops(macs=10**9, batch=4, latency_ms=80.0) == pytest.approx(100.0)
    c = costs.ModelCosts(params=0, macs=1000, act_bytes=50, weight_bytes=400, file_bytes=0)
    assert roofline.arithmetic_intensity(c, 2) == pytest.approx(4000 / 500)
    assert roofline.attainable_gflops(2.0, peak_gflops=100.0, bandwidth_gbps=10.0) == 20.0
    assert roofline.attainable_gflops(50.0, peak_gflops=100.0, bandwidth_gbps=10.0) == 100.0
    assert roofline.peak_gemm_gflops(64, repeats=1) > 0
    assert roofline.peak_copy_gbps(1, repeats=1) > 0
    assert roofline.peak_conv_gflops(channels=8, size=8, batch=1, repeats=1) > 0
    # the peak workload's FLOP count is what PyTorch's own counter sees
    call, flops = roofline.conv_peak_call(channels=8, size=6, batch=2)
    counter = FlopCounterMode(display=False)
    with counter:
        call()
    assert flops == counter.get_total_flops() == 2 * 2 * 6 * 6 * 8 * 8 * 9


def _reference_top_level_ops(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Top-level operator names from plain profiler intervals (no annotations, no parent links):
    an operator is nested when an earlier one on its thread is still running."""
    with torch.inference_mode(), torch.profiler.profile() as prof:
        model(x)
    names, end_by_thread = [], {}
    for event in sorted(prof.events(), key=lambda e: (e.time_range.start, -e.time_range.end)):
        if event.time_range.start < end_by_thread.get(event.thread, -1):
            continue
        end_by_thread[event.thread] = event.time_range.end
        names.append(event.name)
    return names


def test_profile_top_level_ops_match_an_interval_reading_of_the_profiler():
    model, x = _tiny_googlenet(), torch.randn(1, 3, SIZE, SIZE)
    profile = profile_forward(model, x, forwards=1, warmup=1)
    names = [op.name for op in profile.ops]
    assert sorted(names) == sorted(_reference_top_level_ops(model, x))
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert names.count("aten::conv2d") == convs and names.count("aten::linear") == 1
    assert names.count("aten::cat") == len(deeprebirth.models.INCEPTION_CONFIG)


def test_non_tensor_share_is_the_sum_of_non_tensor_op_times_over_all():
    model, x = _tiny_googlenet(), torch.randn(2, 3, SIZE, SIZE)
    profile = profile_forward(model, x, forwards=2)
    non_tensor = sum(op.ms for op in profile.ops if not is_tensor_op(op.name))
    total = sum(op.ms for op in profile.ops)
    assert 0.0 < profile.non_tensor_share() < 1.0
    assert profile.non_tensor_share() == pytest.approx(non_tensor / total)
    assert profile.op_ms() <= sum(profile.module_ms[""]) + 1e-9  # ops run inside the forward
    only_convs = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)).eval()
    assert profile_forward(only_convs, x, forwards=1).non_tensor_share() == 0.0
    only_pools = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)).eval()
    assert profile_forward(only_pools, x, forwards=1).non_tensor_share() == 1.0


def test_layer_and_block_times_split_the_profile():
    model, x = _tiny_googlenet(), torch.randn(1, 3, SIZE, SIZE)
    profile = profile_forward(model, x, forwards=2)
    layers = {layer.name: layer for layer in profile.layer_times()}
    assert sum(layer.total_ms for layer in layers.values()) == pytest.approx(
        profile.op_ms() / profile.forwards
    )
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert layers[name].kind == "Conv2d" and layers[name].non_tensor_ms == 0.0
    assert layers["conv1.pool"].tensor_ms == 0.0 and layers["conv1.pool"].non_tensor_ms > 0
    assert layers["inception_3a:cat"].kind == "cat"
    blocks = zoo.top_level_blocks(model)
    assert "dropout" not in blocks and blocks[:3] == ["conv1", "conv2", "inception_3a"]
    block_ms = profile.block_ms(blocks)
    assert list(block_ms) == blocks
    assert sum(block_ms.values()) <= profile.forward_ms()


def test_fused_ops_count_as_tensor_layers(tiny_run):
    context, _ = tiny_run
    profile = context.profile(zoo.GOOGLENET_SLIM, 1)
    fused = [op for op in profile.ops if op.name.startswith("deeprebirth::")]
    assert fused and all(op.tensor for op in fused)
    branch_layers = [layer for layer in profile.layer_times() if layer.kind == "BranchConv2d"]
    assert branch_layers and all(layer.non_tensor_ms == 0.0 for layer in branch_layers)


def test_timing_rows_ratio_is_baseline_over_variant():
    timings = {"base": Timing((4.0, 6.0, 5.0)), "fast": Timing((2.0, 2.5, 3.0)), "gone": None}
    rows = tables.timing_rows(timings)
    assert rows[0] == ["base", "5.00 [4.00, 6.00]", "1.00x"]
    assert rows[1] == ["fast", "2.50 [2.00, 3.00]", f"{5.0 / 2.5:.2f}x"]
    assert rows[2] == ["gone", "n/a", "n/a"]


def test_unavailable_runtime_is_reported_not_raised(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded\nsecond line")

    monkeypatch.setattr(runtimes, "onnxruntime_forward", broken)
    runtime = build_runtime("onnxruntime", nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8))
    assert runtime.run is None and "exporter exploded" in runtime.note
    with pytest.raises(ValueError, match="expected a runtime"):
        build_runtime("tensorrt", nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8))


def _tables(markdown: str) -> list[list[str]]:
    """Each table's lines (header, separator, rows) in a Markdown page."""
    found, current = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found


def test_suite_writes_every_page_with_machine_lines_and_readable_pngs(tiny_run):
    context, paths = tiny_run
    config, tmp_path = context.config, context.config.out
    names = {p.name for p in paths}
    assert {
        "table1_non_tensor_share.md",
        "figure2_layer_times.md",
        "table4_5_latency.md",
        "peers.md",
        "summary.md",
        "table6_memory.md",
        "roofline.md",
        "deployed_vs_peers.md",
    } <= names
    for path in paths:
        assert path.is_file() and path.parent == tmp_path
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
                assert image.size[0] > 100 and image.size[1] > 100
            continue
        text = path.read_text()
        assert re.fullmatch(r"Measured: \d{4}-\d{2}-\d{2}", text.splitlines()[2])  # dated
        machine = text.splitlines()[4]
        assert machine.startswith("Machine: ") and "torch" in machine
        assert text.count("\n### ") == text.count(f"_{machine}_")  # every table has it
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            assert (tmp_path / image).is_file()
    table1 = (tmp_path / "table1_non_tensor_share.md").read_text()
    for table in _tables(table1):
        assert [row.split("|")[1].strip() for row in table[2:]] == ["GoogLeNet", "GoogLeNet-Slim"]
        for row in table[2:]:
            tensor, non_tensor = (float(row.split("|")[i]) for i in (3, 4))
            assert tensor + non_tensor == pytest.approx(100.0, abs=0.11)
    memory = _tables((tmp_path / "table6_memory.md").read_text())[0]
    assert len(memory) - 2 == len(config.latency_models)


@pytest.mark.skipif(not HAS_DEPLOY, reason="needs the deploy extra (executorch)")
def test_latency_page_lists_int8_models_as_rows_against_the_fp32_original(tmp_path):
    torch.set_num_threads(2)
    config = _tiny_config(
        tmp_path,
        batches=(1,),
        sections=("latency",),
        latency_models=[zoo.GOOGLENET_SLIM],
        latency_runtimes=INT8_PAIR,
    )
    context = BenchContext(config)
    run_suite(config, context)
    page = (tmp_path / "table4_5_latency.md").read_text()
    assert "int8 models as rows, batch 1" in page
    tables_ = _tables(page)
    int8 = next(t for t in tables_ if "-Int8" in "".join(t))
    latency = context.latency[1]
    base = latency[("GoogLeNet-Slim", INT8_PAIR[0])]
    rows = {row.split("|")[1].strip(): row.split("|")[2:-1] for row in int8[2:]}
    assert list(rows) == ["GoogLeNet-Slim", "GoogLeNet-Slim-Int8"]
    for label, cells in rows.items():
        name = INT8_PAIR[1] if label.endswith("-Int8") else INT8_PAIR[0]
        timing = latency[(label.removesuffix("-Int8"), name)]
        assert [c.strip() for c in cells] == [
            tables.timing_cell(timing),
            f"{_per_round_median(base, timing):.2f}x",
        ]


def test_peer_ratio_column_is_the_median_of_per_round_ratios(tiny_run):
    context, _ = tiny_run
    first = _tables((context.config.out / "peers.md").read_text())[0]
    latency = context.latency[1]
    base = latency[("GoogLeNet", "eager")]
    assert len(first) - 2 == 4  # two models x two runtimes
    for row in first[2:]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        label, runtime_label = cells[0].split(" \\| ")
        key = next(k for k in latency if k[0] == label and runtimes.RUNTIMES[k[1]] == runtime_label)
        assert cells[1] == tables.timing_cell(latency[key])
        assert cells[2] == f"{_per_round_median(base, latency[key]):.2f}x"


def test_deployed_page_compares_every_runtime_with_the_deployed_eager_form(tiny_run):
    """One table per batch: the deployed form in its runtimes, then the portable form in every
    other; speed-up = median over rounds of deployed eager / this; GFLOP/s from the portable
    model's MACs, and its share of the peak convolution's GFLOP/s in the same round; every runtime
    gives the eager outputs (random weights: tiny logits, so a tight bound)."""
    context, _ = tiny_run
    config = context.config
    spec = config.deployed_models[0]
    deployed, portable = zoo.in_form(spec, "deployed"), zoo.in_form(spec, "portable")
    macs = context.costs(portable).macs
    page = (config.out / "deployed_vs_peers.md").read_text()
    assert "Peak: fp32 3x3 convolution" in page
    found = _tables(page)
    assert len(found) == len(config.batches)
    for batch, table in zip(config.batches, found, strict=True):
        latency = context.latency[batch]
        # the peak convolution ran in the same rounds as every runtime
        peak_timing, peak_flops = context.peak[batch]
        assert len(peak_timing.samples) == config.repeats
        peak = roofline.peak_gflops(*context.peak[batch])
        assert f"batch {batch}: **{peak:.1f}**" in page
        base = latency[(deployed.label, "eager")]
        expected = [(deployed, n) for n in config.deployed_runtimes]
        expected += [(portable, n) for n in config.portable_runtimes]
        assert len(table) - 2 == len(expected)
        for row, (form_spec, name) in zip(table[2:], expected, strict=True):
            cells = [c.strip() for c in row.strip("|").split(" | ")]
            timing = latency[(form_spec.label, name)]
            assert cells[:3] == [
                form_spec.form,
                runtimes.RUNTIMES[name],
                tables.timing_cell(timing),
            ]
            assert cells[3] == f"{_per_round_median(base, timing):.2f}x"
            gflops = roofline.achieved_gflops(macs, batch, timing.median)
            shares = [
                (2 * macs * batch / t) / (peak_flops / p)
                for t, p in zip(timing.samples, peak_timing.samples, strict=True)
            ]
            assert timing.rounds == peak_timing.rounds
            assert cells[4] == f"{gflops:.1f} ({100 * statistics.median(shares):.0f}%)"
            assert context.runtimes[(form_spec.label, name)].max_abs_diff < 1e-5
    assert {s.form for s in (deployed, portable)} == {"deployed", "portable"}
    # the deployed form holds deeprebirth's operators, the portable one none
    from deeprebirth.export import uses_deeprebirth_ops

    assert uses_deeprebirth_ops(context.model(deployed))
    assert not uses_deeprebirth_ops(context.model(portable))


@pytest.mark.skipif(not HAS_DEPLOY, reason="pip install deeprebirth[deploy]")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_openvino_runtimes_give_eager_outputs_per_batch():
    """Compiled per input shape (static shapes); f32 within float rounding of eager, bf16 within
    bf16's rounding, both over interleaved timing rounds of two batch sizes."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(1024, 10),
    ).eval()
    built = {
        n: build_runtime(n, model, torch.randn(1, 3, 16, 16)) for n in ("openvino", "openvino_bf16")
    }
    assert all(rt.run is not None for rt in built.values()), [rt.note for rt in built.values()]
    assert built["openvino"].max_abs_diff < 1e-5 and "bf16" in built["openvino_bf16"].note
    for batch in (1, 3):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            expected = model(x)
        scale = expected.abs().max().item()
        assert (built["openvino"].run(x) - expected).abs().max().item() <= 1e-5 * scale
        assert (built["openvino_bf16"].run(x) - expected).abs().max().item() <= 3e-2 * scale


def test_cli_options_become_the_config(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["bench", "--quick", "--out", str(tmp_path), "--batches", "1,2"])
    config = config_from_args(args)
    assert config.image_size == 112 and config.batches == (1, 2) and config.out == tmp_path
    assert "compile" in config.peer_runtimes
    args = parser.parse_args(["bench", "--no-compile", "--sections", "latency,memory"])
    config = config_from_args(args)
    assert config.image_size == 224 and "compile" not in config.peer_runtimes
    for names in (config.latency_runtimes, config.deployed_runtimes, config.portable_runtimes):
        assert names and not [n for n in names if n.startswith("compile")]
    assert config.sections == ("latency", "memory")
    args = parser.parse_args(["bench", "--models", "GoogLeNet,GoogLeNet-Slim"])
    config = config_from_args(args)
    assert [s.label for s in config.latency_models] == ["GoogLeNet", "GoogLeNet-Slim"]
    assert [(a.label, b.label) for a, b in config.peer_pairs] == [("GoogLeNet", "GoogLeNet-Slim")]
    assert [s.label for s in config.deployed_models] == ["GoogLeNet-Slim"]
    args = parser.parse_args(["bench", "--models", "GoogLeNet-Slim,ResNet-50"])
    config = config_from_args(args)  # ResNet-50: a deployed model, not a latency one
    assert [s.label for s in config.deployed_models] == ["GoogLeNet-Slim", "ResNet-50"]
    assert [s.label for s in config.latency_models] == ["GoogLeNet-Slim"]
    for bad in ("GoogLeNet,AlexNet-9", "ResNet-50"):  # unknown; no latency model left
        with pytest.raises(ValueError, match="--models"):
            config_from_args(parser.parse_args(["bench", "--models", bad]))
    with pytest.raises(ValueError, match="sections"):
        config_from_args(parser.parse_args(["bench", "--sections", "tables"]))
    chosen = "onnxruntime,executorch_1t,executorch_int8_1t"
    config = config_from_args(parser.parse_args(["bench", "--latency-runtimes", chosen]))
    assert config.latency_runtimes == tuple(chosen.split(","))
    assert config.peer_runtimes == SuiteConfig().peer_runtimes  # the peers page keeps its own
    with pytest.raises(ValueError, match="--latency-runtimes among .*tensorrt"):
        config_from_args(parser.parse_args(["bench", "--latency-runtimes", "eager,tensorrt"]))
    config = config_from_args(parser.parse_args(["bench", "--processes", "3"]))
    assert config.processes == 3 and "in each of 3 fresh processes" in config.settings_line()
    with pytest.raises(ValueError, match="processes >= 1"):
        config_from_args(parser.parse_args(["bench", "--processes", "0"]))


def test_latency_rounds_of_several_processes_are_pooled(tmp_path):
    """With processes=2 the runtimes are timed in two fresh processes (not this one), one after
    the other: every timing holds both processes' rounds, in one round set, so the page's paired
    ratios take all of them; the runtimes built here keep their notes and output differences."""
    config = _tiny_config(
        tmp_path,
        batches=(1,),
        repeats=2,
        processes=2,
        sections=("peers",),
        latency_models=[zoo.GOOGLENET_SLIM],
        peer_pairs=[],
        latency_runtimes=("eager",),
        deployed_runtimes=("eager",),
        portable_runtimes=("eager_channels_last",),
    )
    context = BenchContext(config)
    latency = context.measure_latency()[1]
    pids = context.latency_processes
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert len(latency) == 3  # the slim model, and its deployed and portable forms
    rounds = {t.rounds for t in latency.values()}
    assert len(rounds) == 1 and None not in rounds
    for t in latency.values():
        assert len(t.samples) == 4 and all(s > 0 for s in t.samples)
    peak, flops = context.peak[1]
    assert len(peak.samples) == 4 and peak.rounds in rounds and flops > 0  # paired with them
    for key, runtime in context.runtimes.items():
        assert runtime.run is not None and runtime.max_abs_diff is not None, key


def _compare_models(*args: str, timeout: int = 300):
    """Runs scripts/compare_models.py with ``args``; returns the finished process."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "compare_models.py"
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout
    )


def test_compare_models_script_times_both_files_and_prints_their_speed_ups(tmp_path):
    """scripts/compare_models.py on two saved models: one row per runtime (its speed-up, the
    median of per-round ratios, is checked in the next test) and a best-of-each row, whose
    speed-up is the baseline median over the candidate median."""
    from deeprebirth.io import save_model
    from deeprebirth.models import build_model

    # Model files hold rebuild recipes: models built by name (built-in or registered).
    big = build_model("bvlc_googlenet", num_classes=3, width=0.125, in_channels=1)
    small = build_model("bvlc_googlenet", num_classes=3, width=0.0625, in_channels=1)
    save_model(tmp_path / "teacher.pt", big)
    save_model(tmp_path / "student.pt", small)
    out = tmp_path / "speed.md"
    done = _compare_models(
        str(tmp_path / "teacher.pt"),
        str(tmp_path / "student.pt"),
        *("--input-shape", "1,32,32", "--threads", "1", "--batches", "1,2"),
        *("--runtimes", "eager,torchscript", "--repeats", "2"),
        *("--candidate-rules", "pack_conv", "--candidate-flatten", "--out", str(out)),
    )
    assert done.returncode == 0, done.stderr
    assert "| teacher (ms) | student + pack_conv + flat (ms) |" in out.read_text()
    assert "speed-up: the median over rounds of baseline / candidate" in out.read_text()
    rows = [
        line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| 1 ")
    ]
    assert [r[1].strip() for r in rows] == ["1"] * 3 + ["2"] * 3
    assert [r[2].strip() for r in rows[:2] + rows[3:5]] == ["eager", "TorchScript frozen"] * 2
    assert rows[2][2].strip().startswith("best of each") and rows[5][2].strip().startswith("best")
    assert all(float(r[5].strip().rstrip("x")) > 0 for r in rows)
    for r in (rows[2], rows[5]):
        # the printed times are rounded: the ratio lies between the quotients of their bounds
        (teacher_ms, teacher_half), (student_ms, student_half) = map(_with_rounding, r[3:5])
        ratio = float(r[5].strip().rstrip("x"))
        low = (teacher_ms - teacher_half) / (student_ms + student_half)
        high = (teacher_ms + teacher_half) / max(student_ms - student_half, 1e-12)
        assert low * 0.99 - 0.005 <= ratio <= high * 1.01 + 0.005, (r, low, high)


@pytest.mark.parametrize("blocks", [1, 2])
def test_compare_times_each_runtime_in_its_own_block_after_its_prepare(monkeypatch, blocks):
    """compare(): one interleaved block per runtime holding both models (runtimes taking turns
    ``blocks`` times), and each runtime's ``prepare`` (ExecuTorch's pool size) called before
    every one of its samples. Speed-ups are medians of per-round ratios: over every block's
    rounds, and with several blocks their per-block range."""
    from deeprebirth.bench import compare_models
    from deeprebirth.bench.runtimes import Runtime

    events: list[str] = []
    block_keys: list[set] = []
    records: list[tuple[str, tuple[float, ...]]] = []  # (runtime, samples), in block order

    def fake_build(name, model, x, threads, workdir):
        def run(batch, name=name):
            events.append(f"run {name}")
            return model(batch)

        prepare = (lambda name=name: events.append(f"prepare {name}")) if name != "eager" else None
        return Runtime(name, run, prepare=prepare)

    real = compare_models.interleaved_timings

    def spy(variants, repeats, settle_ms, **kwargs):
        # runtimes hold thread pools: each sample must follow the runtime's own untimed calls;
        # the settling itself is tested in test_bench_timing, here it would only add calls
        assert settle_ms == RUNTIME_SETTLE_MS
        block_keys.append({runtime for runtime, _ in variants})
        timings = real(variants, repeats, warmup=1, min_sample_ms=0, settle_ms=0, **kwargs)
        records.extend((runtime, timings[(runtime, name)].samples) for runtime, name in variants)
        return timings

    monkeypatch.setattr(compare_models, "build_runtime", fake_build)
    monkeypatch.setattr(compare_models, "interleaved_timings", spy)
    models = {"a": nn.Identity(), "b": nn.Identity()}
    rows = compare_models.compare(
        models, (1, 2, 2), [1], [1], ["eager", "torchscript"], 2, blocks=blocks
    )
    assert block_keys == [{"eager"}, {"torchscript"}] * blocks
    assert len(rows) == 2 + 3  # header, rule, one row per runtime, best of each
    scripted = [e for e in events if e.endswith("torchscript")]
    # warm-up + 2 timed rounds for each of the two models, every run after its prepare
    assert scripted == ["prepare torchscript", "run torchscript"] * 6 * blocks
    assert "prepare eager" not in events
    cells = [row.split("|")[1:-1] for row in rows[2:]]
    assert {len(c) for c in cells} == {len(rows[0].split("|")[1:-1])}

    def per_round(a, b):
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    for row, runtime in zip(cells[:2], ["eager", "torchscript"], strict=True):
        per_block = [samples for name, samples in records if name == runtime]
        a_blocks, b_blocks = per_block[::2], per_block[1::2]
        overall = per_round(sum(a_blocks, ()), sum(b_blocks, ()))
        assert row[5].strip() == f"{overall:.2f}x"
        # the millisecond columns are medians of every block's samples
        assert row[3].strip() == f"{statistics.median(sum(a_blocks, ())):.3f}"
        if blocks > 1:
            ratios = [per_round(a, b) for a, b in zip(a_blocks, b_blocks, strict=True)]
            low, high = (float(v) for v in row[6].strip().rstrip("x").split("-"))
            assert (low, high) == (round(min(ratios), 2), round(max(ratios), 2))


def _with_rounding(cell: str) -> tuple[float, float]:
    """A printed number and half a unit of its last decimal (how far rounding can move it)."""
    text = cell.strip()
    decimals = len(text.split(".")[1]) if "." in text else 0
    return float(text), 0.5 * 10.0**-decimals


def test_compare_models_script_refuses_inexact_rules(tmp_path):
    from deeprebirth.io import save_model
    from deeprebirth.models import build_model

    model = build_model("bvlc_googlenet", num_classes=3, width=0.0625, in_channels=1)
    save_model(tmp_path / "a.pt", model)
    save_model(tmp_path / "b.pt", model)
    done = _compare_models(
        str(tmp_path / "a.pt"),
        str(tmp_path / "b.pt"),
        *("--input-shape", "1,32,32", "--candidate-rules", "streamline"),
    )
    assert done.returncode != 0 and "not exact" in done.stderr


def test_compare_models_script_rejects_a_bad_runtime(tmp_path):
    done = _compare_models("a.pt", "b.pt", "--runtimes", "eager,tensorrt", timeout=120)
    assert done.returncode == 2 and "tensorrt" in done.stderr


def test_untrained_models_have_the_configs_architectures_and_feed_compare_models(tmp_path):
    """scripts/untrained_models.py writes the teacher and student a run of the config trains
    (same parameter names and shapes as the job's build_model / build_student) and the config
    compare_models.py reads the input shape from."""
    import subprocess
    import sys

    from deeprebirth.io import load_model
    from deeprebirth.train.config import load_config
    from deeprebirth.train.student import build_student, model_from_config

    root = Path(__file__).resolve().parents[2]
    config = root / "configs" / "synthetic_smoke.yaml"
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "untrained_models.py"), str(config)]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    cfg = load_config(config)
    teacher = model_from_config(cfg)
    expected = {"teacher": teacher, "student": build_student(teacher, cfg)[0]}
    for name, model in expected.items():
        written = load_model(tmp_path / f"{name}.pt")[0]
        shapes = {k: v.shape for k, v in written.state_dict().items()}
        assert shapes == {k: v.shape for k, v in model.state_dict().items()}, name
    compared = _compare_models(
        str(tmp_path / "teacher.pt"),
        str(tmp_path / "student.pt"),
        *("--threads", "1", "--runtimes", "eager", "--repeats", "1"),
    )
    assert compared.returncode == 0, compared.stderr
    size = cfg.model.input_size
    assert f"Input: ({cfg.model.in_channels}, {size}, {size})" in compared.stdout


@pytest.mark.parametrize(
    "script",
    [
        "bench_ops.py",
        "bench_models.py",
        "bench_direct_conv.py",
        "benchmark.py",
        "compare_models.py",
        "untrained_models.py",
    ],
)
def test_benchmark_scripts_start(script):
    """Each benchmark script imports and parses its arguments (they are not run by CI)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout


@pytest.mark.parametrize("blocks", ["0", "two"])
def test_compare_models_rejects_a_bad_block_count(blocks, capsys):
    from deeprebirth.bench.compare_models import main

    with pytest.raises(SystemExit) as exit_info:
        main(["a.pt", "b.pt", "--blocks", blocks])
    assert exit_info.value.code == 2
    assert f"expected a positive integer, got {blocks!r}" in capsys.readouterr().err
