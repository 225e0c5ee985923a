"""What a benchmark run measures: :class:`SuiteConfig`, with the full and ``--quick`` presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deeprebirth.bench import zoo
from deeprebirth.bench.zoo import ModelSpec

SECTIONS = (
    "non_tensor_share",
    "layer_times",
    "latency",
    "peers",
    "profiles",
    "memory",
    "roofline",
)
DEPLOY_RUNTIMES = (  # the phone and server runtimes a slim model ships to (portable form)
    "compile_freezing",
    "executorch_1t",
    "executorch_2t",
    "openvino",
)
# Tables 4/5; the int8 columns give the paper's Table 5 its GoogLeNet-Int8 / -Slim-Int8 rows
INT8_RUNTIMES = ("executorch_int8_1t", "executorch_int8_2t", "inductor_int8")
INT8_OF = {  # each fp32 runtime and its int8 form: the int8 table's columns
    "executorch_1t": "executorch_int8_1t",
    "executorch_2t": "executorch_int8_2t",
    "compile_freezing": "inductor_int8",
}
LATENCY_RUNTIMES = ("eager", "torchscript", "onnxruntime", *DEPLOY_RUNTIMES, *INT8_RUNTIMES)
PEER_RUNTIMES = (  # the original model in every form a user might try, and the slim one likewise
    "eager",
    "eager_channels_last",
    "torchscript",
    "jit_optimized",
    "compile",
    "onnxruntime",
    *DEPLOY_RUNTIMES,
    "openvino_bf16",
)
# The "peers" page: deeprebirth's deployed form in PyTorch's runtimes (the first, frozen
# TorchScript with deeprebirth's operators as the C++ runner runs it, is the deployed path the
# ratios compare with) against the portable form in every other runtime.
DEPLOYED_FORM_RUNTIMES = ("torchscript", "eager", "torchscript_onednn", "compile_freezing")
PORTABLE_FORM_RUNTIMES = (
    "eager_channels_last",
    "compile_freezing",
    "onnxruntime",
    "executorch_1t",
    "executorch_2t",
    "openvino",
    "openvino_bf16",
)


@dataclass
class SuiteConfig:
    """Settings of one benchmark run (see ``deeprebirth bench --help``).

    Attributes:
        out: folder for the ``*.md`` tables and ``*.png`` plots.
        image_size: input height and width.
        batches: batch sizes; the first is the latency batch (1), the others larger.
        repeats: timed interleaved rounds per variant; ``warmup`` untimed rounds first.
        processes: fresh Python processes the latency rounds are timed in (1: this one). Each
            builds every runtime and times ``repeats`` rounds; the tables pool their rounds
            (:func:`~deeprebirth.bench.timing.pooled_timings`), so a ratio is the median over
            every process's rounds and no single process's placement in memory decides it
            (docs/benchmarks.md, "Measurement traps").
        profile_forwards: profiled forward passes per model (Table 1, Figure 2, per-block times).
        threads: torch (and ONNX Runtime) intra-op threads; 0 leaves torch's default.
        device: ``"cpu"`` or ``"cuda"`` for latency, memory and roofline (profiles are CPU).
        memory_budget_mib: budget for the largest-batch column of the memory table.
        gemm_size, copy_mib: sizes of the peak GEMM and copy measurements.
        peak_conv_batch: batch of the peak convolution the "peers" page times in the same
            rounds as the runtimes (:func:`~deeprebirth.bench.roofline.conv_peak_call`).
        sections: which pages to write (:data:`SECTIONS`).
        non_tensor_models, layer_time_models, latency_models, peer_pairs, deployed_models: what
            each page compares (``deployed_models``: the "peers" page's models, each in its
            deployed and its portable form).
        latency_runtimes, peer_runtimes: runtimes of the latency table and of the peer comparison.
        deployed_runtimes, portable_runtimes: the "peers" page's runtimes of each form.
        model_kwargs: constructor overrides by model source (tests shrink bvlc_googlenet).
        command: the command line that reproduces the run (written on every page).
    """

    out: Path = Path("docs/results")
    image_size: int = 224
    batches: tuple[int, ...] = (1, 8)
    repeats: int = 20
    warmup: int = 2
    processes: int = 1
    profile_forwards: int = 5
    threads: int = 0
    device: str = "cpu"
    memory_budget_mib: int = 1024
    gemm_size: int = 2048
    copy_mib: int = 256
    peak_conv_batch: int = 32
    sections: tuple[str, ...] = SECTIONS
    non_tensor_models: list[ModelSpec] = field(
        default_factory=lambda: list(zoo.NON_TENSOR_SHARE_MODELS)
    )
    layer_time_models: list[ModelSpec] = field(default_factory=lambda: list(zoo.LAYER_TIME_MODELS))
    latency_models: list[ModelSpec] = field(default_factory=lambda: list(zoo.LATENCY_MODELS))
    peer_pairs: list[tuple[ModelSpec, ModelSpec]] = field(
        default_factory=lambda: list(zoo.PEER_PAIRS)
    )
    deployed_models: list[ModelSpec] = field(default_factory=lambda: list(zoo.DEPLOYED_MODELS))
    latency_runtimes: tuple[str, ...] = LATENCY_RUNTIMES
    peer_runtimes: tuple[str, ...] = PEER_RUNTIMES
    deployed_runtimes: tuple[str, ...] = DEPLOYED_FORM_RUNTIMES
    portable_runtimes: tuple[str, ...] = PORTABLE_FORM_RUNTIMES
    model_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: str = "python scripts/benchmark.py"

    def __post_init__(self) -> None:
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"expected sections among {SECTIONS}, but got {sorted(unknown)}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"expected positive batch sizes, but got {self.batches}")
        if self.processes < 1:
            raise ValueError(f"expected processes >= 1, but got {self.processes}")
        if self.repeats < 1 or self.profile_forwards < 1:
            raise ValueError(
                f"expected repeats and profile_forwards >= 1, but got {self.repeats}, {self.profile_forwards}"
            )
        self.out = Path(self.out)

    def settings_line(self) -> str:
        """One line of the run's settings for every page."""
        where = (
            f" in each of {self.processes} fresh processes, pooled" if self.processes > 1 else ""
        )
        return (
            f"input {self.image_size}x{self.image_size}, batches {', '.join(map(str, self.batches))}, "
            f"{self.warmup} warm-up + {self.repeats} interleaved timed rounds{where} "
            f"(medians [min, max]), {self.profile_forwards} profiled forwards, device {self.device}, "
            "random weights"
        )


def quick_config(**overrides: Any) -> SuiteConfig:
    """The ``--quick`` preset: 112x112, batches 1 and 4, 3 rounds, one peer pair; every page is
    written, in minutes on 2 cores (numbers are indicative only)."""
    quick = SuiteConfig(
        image_size=112,
        batches=(1, 4),
        repeats=3,
        warmup=1,
        profile_forwards=2,
        gemm_size=1024,
        copy_mib=64,
        peak_conv_batch=8,
        peer_pairs=[zoo.PEER_PAIRS[0]],
        deployed_models=[zoo.GOOGLENET_SLIM],
    )
    return replace(quick, **overrides)
