"""PNG figures of the benchmark (matplotlib, Agg backend): per-layer time in two colours (the
paper's Figure 2), non-tensor share, latency by model and runtime, and the roofline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from deeprebirth.bench.profiling import LayerTime
from deeprebirth.bench.timing import Timing

TENSOR_COLOUR, NON_TENSOR_COLOUR = "#1f77b4", "#d62728"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_layer_times(layers: Sequence[LayerTime], title: str, path: Path) -> Path:
    """Bars of per-forward time of each layer in execution order: tensor operator time in blue,
    non-tensor operator time in red (stacked where a layer has both)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(min(40, max(8, 0.12 * len(layers) + 3)), 4.5))
    positions = range(len(layers))
    tensor = [layer.tensor_ms for layer in layers]
    ax.bar(positions, tensor, color=TENSOR_COLOUR, label="tensor layers (conv, linear)")
    ax.bar(
        positions,
        [layer.non_tensor_ms for layer in layers],
        bottom=tensor,
        color=NON_TENSOR_COLOUR,
        label="non-tensor layers (pool, ReLU, LRN, BN, concat …)",
    )
    ax.set_xticks(list(positions), [layer.name for layer in layers], rotation=90, fontsize=5)
    ax.set_ylabel("time per forward (ms)")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_non_tensor_share(shares: Mapping[str, float], title: str, path: Path) -> Path:
    """Horizontal bars: share of forward time in non-tensor layers (%) per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(shares) + 1.5))
    labels = list(shares)
    values = [100 * shares[label] for label in labels]
    ax.barh(labels, values, color=NON_TENSOR_COLOUR)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.1f}%", va="center", fontsize=8)
    ax.set_xlim(0, 100)
    ax.invert_yaxis()
    ax.set_xlabel("non-tensor share of operator time (%)")
    ax.set_title(title)
    return _save(fig, path)


def plot_latency(
    latency: Mapping[str, Mapping[str, Timing | None]], title: str, path: Path
) -> Path:
    """Grouped bars: median latency per model (groups) and runtime (bars), min-max whiskers.

    ``latency`` is ``{model: {runtime label: Timing or None}}``; missing runtimes leave a gap.
    """
    plt = _pyplot()
    models = list(latency)
    runtimes = list(dict.fromkeys(r for by_runtime in latency.values() for r in by_runtime))
    width = 0.8 / max(1, len(runtimes))
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(models) + 2), 4.5))
    for index, runtime in enumerate(runtimes):
        xs, medians, low, high = [], [], [], []
        for m, model in enumerate(models):
            timing = latency[model].get(runtime)
            if timing is None:
                continue
            xs.append(m + (index - (len(runtimes) - 1) / 2) * width)
            medians.append(timing.median)
            low.append(timing.median - timing.min)
            high.append(timing.max - timing.median)
        ax.bar(xs, medians, width, yerr=[low, high], capsize=2, label=runtime)
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("latency (ms, median; whiskers min-max)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roofline(
    points: Sequence[tuple[str, float, float]],
    peak_gflops: float,
    bandwidth_gbps: float,
    title: str,
    path: Path,
) -> Path:
    """The roofline (log-log): ``min(peak, bandwidth x intensity)`` and each ``(label,
    FLOP/byte, achieved GFLOP/s)`` point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    intensities = [p[1] for p in points] or [1.0]
    lo, hi = min(intensities) / 4, max(max(intensities) * 4, 4 * peak_gflops / bandwidth_gbps)
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [min(peak_gflops, bandwidth_gbps * x) for x in grid], "k-", label="roofline")
    ax.axhline(peak_gflops, color="grey", ls=":", lw=0.8)
    markers = "os^Dv<>ph*"
    for index, (label, intensity, gflops) in enumerate(points):
        ax.plot(intensity, gflops, markers[index % len(markers)], label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"{title}\npeak GEMM {peak_gflops:.1f} GFLOP/s, copy {bandwidth_gbps:.1f} GB/s")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
