"""The finetune job's ``report.md`` (accuracy per stage, latency, memory) and accuracy plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprebirth.bench.costs import peak_tensor_bytes
from deeprebirth.bench.timing import interleaved_timings, machine_line


def measure_speed(
    models: dict[str, nn.Module], input_shape: tuple[int, ...], repeats: int = 20
) -> dict[str, dict[str, float]]:
    """Batch-1 CPU latency (median ms, interleaved runs) and peak extra memory of each model
    (tensor bytes a forward holds beyond its weights, :func:`deeprebirth.bench.costs.peak_tensor_bytes`).

    Returns ``{name: {"latency_ms", "memory_mb", "params"}}``.
    """
    x = torch.randn(input_shape)
    models = {name: m.cpu().eval() for name, m in models.items()}
    with torch.inference_mode():
        timings = interleaved_timings(
            {n: (lambda m=m: m(x)) for n, m in models.items()}, repeats=repeats
        )
    return {
        name: {
            "latency_ms": timings[name].median,
            "memory_mb": peak_tensor_bytes(lambda m=m: m(x)) / 2**20,
            "params": sum(p.numel() for p in m.parameters()),
        }
        for name, m in models.items()
    }


def accuracy_figure(history: list[dict[str, Any]]) -> Any:
    """A matplotlib figure of top-1/top-5 after each evaluation point, one row per point.

    Stages run down the vertical axis with horizontal labels (``"3. conv2+inception_3a"``,
    numbered as in the report's table, shortened past 60 characters), and the figure grows in
    height with their number: labels never overlap or squeeze the axes, however many stages.
    """
    import textwrap

    import matplotlib.pyplot as plt

    count = len(history)
    labels = [
        f"{i}. {textwrap.shorten(h['label'], 60, placeholder='...')}" for i, h in enumerate(history)
    ]
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.3 * max(count, 4)))
    rows = range(count)
    ax.plot([h["top1"] for h in history], rows, "o-", label="top-1")
    ax.plot([h["top5"] for h in history], rows, "s--", label="top-5")
    ax.set_yticks(rows, labels, fontsize=8)
    ax.set_ylim(count - 0.5, -0.5)  # the first stage on top, as in the table
    ax.set_xlabel("accuracy (%)")
    ax.set_title("accuracy after each stage")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_accuracy(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Writes :func:`accuracy_figure` as a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig = accuracy_figure(history)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(
    output_dir: Path,
    history: list[dict[str, Any]],
    speed: dict[str, dict[str, float]],
    summary: dict[str, Any],
) -> Path:
    """Writes ``report.md`` (and ``accuracy.png``) to ``output_dir``; returns the report's path."""
    lines = ["# Layer-wise finetuning report", "", f"Machine: {machine_line()}", ""]
    lines += [f"- {key}: {value}" for key, value in summary.items()]
    lines += [
        "",
        "## Accuracy after each stage",
        "",
        "| # | evaluated after | blocks | top-1 (%) | top-5 (%) | val loss | train time (s) | ms/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, h in enumerate(history):
        lines.append(
            f"| {i} | {h['label']} | {h.get('blocks') or '-'} | {h['top1']:.2f} | "
            f"{h['top5']:.2f} | {h['loss']:.4f} | {h.get('train_s') or '-'} | {h.get('ms_per_step') or '-'} |"
        )
    if speed:
        base = speed.get("teacher", {}).get("latency_ms")
        lines += [
            "",
            "## Speed (batch 1, CPU)",
            "",
            "| model | latency (ms, median) | speed-up | peak extra memory (MiB) | parameters |",
            "|---|---|---|---|---|",
        ]
        for name, s in speed.items():
            ratio = f"{base / s['latency_ms']:.2f}x" if base else "-"
            lines.append(
                f"| {name} | {s['latency_ms']:.2f} | {ratio} | {s['memory_mb']:.2f} | {s['params']:,} |"
            )
    plot = plot_accuracy(history, output_dir / "accuracy.png") if history else None
    if plot is not None:
        lines += ["", f"![accuracy per stage]({plot.name})"]
    path = output_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
