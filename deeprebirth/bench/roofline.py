"""How far a model runs from the hardware limit: measured peak GEMM and copy throughput.

The compute roof is the best throughput of a large square ``torch.mm`` (``2 n^3`` FLOP); the
memory roof the best bandwidth of copying a large tensor (read + write bytes). A model's achieved
throughput is ``2 * MACs * batch / latency``; its arithmetic intensity is FLOP per byte of its
weights plus one write of every layer output (a lower bound on its memory traffic).

Example:
    >>> achieved_gflops(macs=1_500_000_000, batch=1, latency_ms=30.0)
    100.0
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from deeprebirth.bench.costs import ModelCosts
from deeprebirth.bench.timing import Timing, speed_ratio


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()
    _synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def peak_gemm_gflops(size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best GFLOP/s of an fp32 ``size x size`` matrix product over ``repeats`` runs."""
    dev = torch.device(device)
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    out = torch.empty(size, size, device=dev)
    seconds = _best_seconds(lambda: torch.mm(a, b, out=out), repeats, dev)
    return 2 * size**3 / seconds / 1e9


def conv_peak_call(
    channels: int = 256, size: int = 28, batch: int = 32, device: str = "cpu"
) -> tuple[Callable[[], object], int]:
    """The compute-roof workload: an fp32 3x3 convolution (``channels`` -> ``channels``,
    ``size`` x ``size``, padding 1, channels_last) as a no-argument call, and its FLOP count.

    A tighter compute roof than :func:`peak_gemm_gflops` on CPUs where the BLAS takes a narrower
    vector path than oneDNN (docs/benchmarks.md).
    """
    dev = torch.device(device)
    x = torch.randn(batch, channels, size, size, device=dev)
    w = torch.randn(channels, channels, 3, 3, device=dev)
    x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))

    def call() -> object:
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, w, padding=1)

    return call, 2 * batch * size * size * channels * channels * 9


def peak_conv_gflops(
    channels: int = 256, size: int = 28, batch: int = 32, repeats: int = 5, device: str = "cpu"
) -> float:
    """Best GFLOP/s of :func:`conv_peak_call`'s convolution over ``repeats`` runs."""
    call, flops = conv_peak_call(channels, size, batch, device)
    return flops / _best_seconds(call, repeats, torch.device(device)) / 1e9


def peak_gflops(timing: Timing, flops: int, best: bool = False) -> float:
    """GFLOP/s of ``flops`` done in ``timing``'s median sample (its fastest with ``best``).

    Example:
        >>> peak_gflops(Timing((2.0, 4.0, 5.0)), 8_000_000_000)
        2000.0
    """
    ms = min(timing.samples) if best else timing.median
    return flops / (ms * 1e-3) / 1e9


def peak_copy_gbps(mib: int = 256, repeats: int = 5, device: str = "cpu") -> float:
    """Best GB/s (read + write) of copying an fp32 tensor of ``mib`` MiB."""
    dev = torch.device(device)
    src = torch.randn(mib * 2**20 // 4, device=dev)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), repeats, dev)
    return 2 * src.numel() * 4 / seconds / 1e9


def share_of_peak(timing: Timing, flops: int, peak: Timing, peak_flops: int) -> float:
    """The share of the peak's throughput that ``flops`` done in ``timing`` reach: per round when
    both were timed in the same interleaved rounds (the median of the rounds' shares, which a
    drifting machine does not move), else from the two medians.

    Example:
        >>> share_of_peak(Timing((4.0, 8.0)), 1000, Timing((1.0, 2.0)), 2000)
        0.125
    """
    return speed_ratio(peak, timing) * flops / peak_flops


def achieved_gflops(macs: int, batch: int, latency_ms: float) -> float:
    """GFLOP/s of a forward of ``batch`` images of ``macs`` MACs each taking ``latency_ms``."""
    return 2 * macs * batch / (latency_ms * 1e-3) / 1e9


def arithmetic_intensity(costs: ModelCosts, batch: int) -> float:
    """FLOP per byte of one forward of ``batch`` images: weights read once, outputs written once."""
    return 2 * costs.macs * batch / (costs.weight_bytes + costs.act_bytes * batch)


def attainable_gflops(intensity: float, peak_gflops: float, bandwidth_gbps: float) -> float:
    """The roofline: ``min(peak, bandwidth * intensity)``."""
    return min(peak_gflops, bandwidth_gbps * intensity)
