"""The DeepRebirth ablation: new-layer init (Xavier vs inherited) x new-layer LR (10x vs 1x).

Runs the finetune job once per variant from one trained teacher, each in its own process and
output folder (``--jobs`` at a time, one thread each), then writes one Markdown table of the final
top-1/top-5 of every variant next to the teacher's:

    python scripts/ablation.py --config configs/fashion_mnist_googlenet.yaml \\
        --teacher runs/fashion_mnist_googlenet/teacher.pt --out docs/results/fashion_mnist/ablation.md

Extra ``key=value`` arguments go to every run (e.g. a shorter schedule).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from deeprebirth.bench.timing import machine_line

INITS = ("xavier", "inherit")
LR_MULTS = (10.0, 1.0)


def evaluations(run_dir: Path) -> list[dict]:
    """The ``eval`` records of a finished run, in order."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


def run_variant(config: str, teacher: str, init: str, mult: float, root: Path, extra: list[str]):
    """Runs one variant (skipped when its report exists); returns its output folder."""
    out = root / f"{init}_lr{mult:g}x"
    if (out / "report.md").is_file():
        return out
    overrides = [
        f"teacher.weights={teacher}",
        f"surgery.init={init}",
        f"new_layer_lr_mult={mult}",
        f"output_dir={out}",
        "threads=1",
        "latency_repeats=0",
        *extra,
    ]
    command = [sys.executable, "-m", "deeprebirth.finetune", "--config", config, *overrides]
    with open(root / f"{out.name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return out


def table(results: dict[tuple[str, float], Path], extra: list[str]) -> str:
    """The Markdown ablation table (final accuracy of each variant and its change vs teacher)."""
    first = evaluations(next(iter(results.values())))
    teacher = next(r for r in first if r["label"] == "teacher")
    rows = [
        "# Ablation: new-layer initialisation x new-layer learning rate",
        "",
        f"Machine: {machine_line()}",
        "",
        f"Teacher top-1 {teacher['top1']:.2f}%, top-5 {teacher['top5']:.2f}%. "
        f"Overrides of every run: {' '.join(extra) or '(none)'}.",
        "",
        "| init | new-layer LR | student before training top-1 | final top-1 | final top-5 | vs teacher (top-1 points) |",
        "|---|---|---|---|---|---|",
    ]
    for (init, mult), run_dir in results.items():
        records = evaluations(run_dir)
        before = next(r for r in records if r["label"].startswith("student, before"))
        final = records[-1]
        rows.append(
            f"| {init} | {mult:g}x | {before['top1']:.2f} | {final['top1']:.2f} | "
            f"{final['top5']:.2f} | {final['top1'] - teacher['top1']:+.2f} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="finetune YAML config")
    parser.add_argument("--teacher", required=True, help="trained teacher model file")
    parser.add_argument("--runs", default="runs/ablation", help="folder of the variants' runs")
    parser.add_argument("--out", required=True, help="Markdown table to write")
    parser.add_argument("--jobs", type=int, default=2, help="variants run at once")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as every variant runs (threads=1): the table's machine line says so
    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    variants = list(itertools.product(INITS, LR_MULTS))
    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = pool.map(
            lambda v: run_variant(args.config, args.teacher, *v, root, args.overrides), variants
        )
        results = dict(zip(variants, dirs, strict=True))
    text = table(results, args.overrides)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0
