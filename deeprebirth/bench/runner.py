"""Original vs slim GoogLeNet: ``deeprebirth-run --bench`` (C++) next to eager PyTorch (Python).

Both models are exported as native TorchScript (deeprebirth ops kept; with ``--onednn-graph``,
portable and run by ``deeprebirth-run --onednn-graph``) and benchmarked by the C++ runner in
alternating runs (A B A B …); the Python numbers come from
:func:`deeprebirth.bench.timing.interleaved_timings` on the eager models in this process.
Prints slim/original ratios (< 1 means slim is faster or smaller) and the machine line.

The slim model is ``--slim FILE`` (a deeprebirth model file, e.g. from ``deeprebirth slim``);
without it, ``deeprebirth.slim`` of the original with the paper's rules (streamline: conv1 and
conv2 without their pools and LRNs; branch_slim: narrower 3x3/5x5 reducers) and the exact rules
(fold_bn, fuse_conv_pool, merge_branches: each Inception module's 1x1 convolutions as one
BranchConv2d). Its new layers are Xavier-initialised, not finetuned: latency does not depend on
the weights.

    python scripts/bench_runner.py --threads 2 --rounds 3 --iters 50
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

import deeprebirth
import deeprebirth.io
from deeprebirth.bench.timing import interleaved_timings, machine_line
from deeprebirth.bench.zoo import SLIM_RULES  # GoogLeNet-Slim, as scripts/bench_models.py
from deeprebirth.models import bvlc_googlenet

ROOT = Path(__file__).resolve().parents[2]  # the repository (deeprebirth/bench/<this>)

RUNNER_FIELDS = {
    "p50_ms": r"p50 ([\d.]+)",
    "p90_ms": r"p90 ([\d.]+)",
    "p99_ms": r"p99 ([\d.]+)",
    "images_per_s": r"throughput: ([\d.]+)",
    "peak_rss_mib": r"peak RSS \(VmHWM\): ([\d.]+)",
    "tensor_share": r"tensor ops\s+[\d.]+ ms\s+([\d.]+) %",
    "non_tensor_share": r"non-tensor ops\s+[\d.]+ ms\s+([\d.]+) %",
}


def parse_bench(output: str) -> dict[str, float]:
    """The numbers of one ``deeprebirth-run --bench`` report."""
    values = {}
    for key, pattern in RUNNER_FIELDS.items():
        match = re.search(pattern, output)
        values[key] = float(match.group(1)) if match else float("nan")
    return values


def find_runner() -> Path:
    found = sorted((ROOT / "build").glob("**/csrc/runner/deeprebirth-run"))
    if not found:
        sys.exit("deeprebirth-run is not built: cmake --build build/cmake")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--slim",
        help=f"slim deeprebirth model file (default: deeprebirth.slim with {','.join(SLIM_RULES)})",
    )
    parser.add_argument("--original", help="original model file (default: bvlc_googlenet)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runner runs per model")
    parser.add_argument(
        "--onednn-graph",
        action="store_true",
        help="export portable TorchScript and run the runner with --onednn-graph",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    original = (
        deeprebirth.io.load_model(args.original)[0] if args.original else bvlc_googlenet().eval()
    )
    example = torch.randn(args.batch, 3, args.image_size, args.image_size)
    if args.slim:
        slim = deeprebirth.io.load_model(args.slim)[0]
    else:  # streamline chooses paddings for this input size
        slim, report = deeprebirth.slim(original.eval(), SLIM_RULES, example[:1])
        print(report.summary())
    models = {"original": original.eval(), "slim": slim.eval()}
    runner = find_runner()

    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = {
            name: deeprebirth.export(
                model,
                example,
                "torchscript",
                portable=args.onednn_graph,
                out=Path(folder) / f"{name}.ts",
                metadata={"source_model": f"bvlc_googlenet ({name})"},
            )
            for name, model in models.items()
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, path in files.items():
                command = [str(runner), str(path), "--bench", "--batch", str(args.batch)]
                command += ["--threads", str(args.threads), "--warmup", str(args.warmup)]
                command += ["--iters", str(args.iters), "--profile-iters", "5"]
                command += ["--onednn-graph"] if args.onednn_graph else []
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                runs[name].append(parse_bench(result.stdout))

    with torch.inference_mode():
        python = interleaved_timings(
            {name: (lambda m=model: m(example)) for name, model in models.items()},
            repeats=args.iters,
            warmup=args.warmup,
        )

    print(machine_line())
    print(
        f"bvlc_googlenet {args.image_size}x{args.image_size}, batch {args.batch}, "
        f"{args.threads} threads; runner"
        f"{' (portable files, --onednn-graph)' if args.onednn_graph else ''}: median of "
        f"{args.rounds} alternating runs of "
        f"{args.iters} iterations; Python: eager, interleaved, {args.iters} repeats"
    )
    header = f"{'metric':<28}{'original':>12}{'slim':>12}{'slim/orig':>11}"
    print(header)
    print("-" * len(header))
    for key in RUNNER_FIELDS:
        a = statistics.median(r[key] for r in runs["original"])
        b = statistics.median(r[key] for r in runs["slim"])
        ratio = b / a if a else float("nan")  # a share can be 0 (every op fused, say)
        print(f"{'C++ ' + key:<28}{a:>12.3f}{b:>12.3f}{ratio:>11.3f}")
    a, b = python["original"].median, python["slim"].median
    print(f"{'Python eager p50_ms':<28}{a:>12.3f}{b:>12.3f}{b / a:>11.3f}")
    return 0
