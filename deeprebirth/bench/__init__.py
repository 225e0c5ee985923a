"""The benchmark suite: the DeepRebirth paper's tables rebuilt on the machine at hand.

``deeprebirth bench`` / ``scripts/benchmark.py`` run :func:`run_suite`, which writes Markdown
tables and PNG plots (default ``docs/results/``):

- ``table1_non_tensor_share``: share of forward time in non-tensor layers (Table 1).
- ``figure2_layer_times`` + ``figure2_<model>.png``: per-layer time, tensor vs non-tensor (Figure 2).
- ``table4_5_latency`` + ``latency.png``: per-block and total latency in eager, TorchScript and
  ONNX Runtime (Tables 4/5).
- ``peers``: the original model in every runtime (optimize_for_inference, torch.compile, ONNX
  Runtime …) against the slim model in the same runtimes.
- ``table6_memory``: storage, parameters, MACs, peak memory, largest batch in a budget (Table 6).
- ``roofline`` + ``roofline.png``: achieved GFLOP/s against the measured peak GEMM.
- ``summary``: the batch-1 latency table and the peer verdicts.
- ``deployed_vs_peers``: deeprebirth's deployed path against every runtime on the same model.
- ``runtime_profiles``: where each runtime spends a forward of the same model, by kernel category
  (torch.profiler, OpenVINO's per-layer counters, ONNX Runtime's profiler), side by side.

The building blocks are usable on their own: :func:`profile_forward` (operator times by module,
tensor vs non-tensor), :func:`build_runtime`, :func:`model_costs`, :func:`peak_gemm_gflops`.
"""

from deeprebirth.bench.config import SECTIONS, SuiteConfig, quick_config
from deeprebirth.bench.costs import ModelCosts, max_batch_within, model_costs, peak_tensor_bytes
from deeprebirth.bench.profiling import ForwardProfile, is_tensor_op, profile_forward
from deeprebirth.bench.roofline import achieved_gflops, peak_copy_gbps, peak_gemm_gflops
from deeprebirth.bench.runtimes import RUNTIMES, Runtime, build_runtime
from deeprebirth.bench.suite import run_suite

__all__ = [
    "RUNTIMES",
    "SECTIONS",
    "ForwardProfile",
    "ModelCosts",
    "Runtime",
    "SuiteConfig",
    "achieved_gflops",
    "build_runtime",
    "is_tensor_op",
    "max_batch_within",
    "model_costs",
    "peak_copy_gbps",
    "peak_gemm_gflops",
    "peak_tensor_bytes",
    "profile_forward",
    "quick_config",
    "run_suite",
]
