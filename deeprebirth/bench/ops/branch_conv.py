"""Benchmark: deeprebirth::branch_conv vs. separate F.conv2d + ReLU + torch.cat (not a test).

Cases: every bvlc GoogLeNet Inception module's three 1x1 convs over the module input (1x1,
3x3_reduce, 5x5_reduce; bias + ReLU) and re-parameterised 3x3+5x5 pairs, at batch 1 and 32. Each
side runs in NCHW and in channels_last (weights too); the ratio compares the best layout of each
(reference median / branch_conv median, > 1 means branch_conv is faster), all variants interleaved
in one process (deeprebirth.bench.timing). Peak memory is the peak resident memory one call
adds (VmHWM, output included, lowest of 5 calls), for each side's best layout. "GF/s" is each
side's best-layout throughput (2 x MACs / median); "bound" is the machine's fp32 peak (a large
3x3 convolution, deeprebirth.bench.roofline.peak_conv_gflops, measured at the start) over the
reference's throughput: about the most any kernel that does the same arithmetic can gain over it.

    python scripts/bench_branch_conv.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deeprebirth.bench.compare_models import int_list
from deeprebirth.bench.roofline import achieved_gflops, peak_conv_gflops
from deeprebirth.bench.timing import (
    configure_allocator,
    interleaved_timings,
    machine_line,
    peak_extra_rss_bytes,
)
from deeprebirth.ops import branch_conv


@dataclass(frozen=True)
class Case:
    """Branches over one input: (out_channels, kernel) each, "same" padding, stride 1."""

    name: str
    in_channels: int
    size: int
    branches: tuple[tuple[int, int], ...]


INCEPTION_1X1 = [
    Case("3a 1x1s", 192, 28, ((64, 1), (96, 1), (16, 1))),
    Case("3b 1x1s", 256, 28, ((128, 1), (128, 1), (32, 1))),
    Case("4a 1x1s", 480, 14, ((192, 1), (96, 1), (16, 1))),
    Case("4b 1x1s", 512, 14, ((160, 1), (112, 1), (24, 1))),
    Case("4c 1x1s", 512, 14, ((128, 1), (128, 1), (24, 1))),
    Case("4d 1x1s", 512, 14, ((112, 1), (144, 1), (32, 1))),
    Case("4e 1x1s", 528, 14, ((256, 1), (160, 1), (32, 1))),
    Case("5a 1x1s", 832, 7, ((256, 1), (160, 1), (32, 1))),
    Case("5b 1x1s", 832, 7, ((384, 1), (192, 1), (48, 1))),
]
# 3x3 + 5x5 branches re-parameterised to read one shared reducer output (widths of 3a and 4a).
REPARAM_PAIRS = [
    Case("3x3+5x5 @28", 128, 28, ((128, 3), (32, 5))),
    Case("3x3+5x5 @14", 112, 14, ((208, 3), (48, 5))),
]
QUICK = [INCEPTION_1X1[0], INCEPTION_1X1[6], INCEPTION_1X1[8], REPARAM_PAIRS[0]]


def reference(x, weights, biases, paddings):
    """The unfused sequence, given its best shot: in-place ReLU on each branch, then cat."""
    outs = [
        F.conv2d(x, w, b, 1, p).relu_() for w, b, p in zip(weights, biases, paddings, strict=True)
    ]
    return torch.cat(outs, 1)


def case_macs(case: Case) -> int:
    """Multiply-accumulates of all branches of ``case`` for one image ("same" padding, stride 1)."""
    per_pixel = sum(c * case.in_channels * k * k for c, k in case.branches)
    return case.size * case.size * per_pixel


def measure(case: Case, batch: int, repeats: int) -> dict:
    """Times the four variants of one case interleaved; returns medians, ratio and peak memory."""
    torch.manual_seed(0)
    x = torch.randn(batch, case.in_channels, case.size, case.size)
    weights = [torch.randn(c, case.in_channels, k, k) * 0.05 for c, k in case.branches]
    biases = [torch.randn(c) for c, _ in case.branches]
    paddings = [k // 2 for _, k in case.branches]
    cl = torch.channels_last
    x_cl, w_cl = x.contiguous(memory_format=cl), [w.contiguous(memory_format=cl) for w in weights]
    variants = {
        "ref nchw": lambda: reference(x, weights, biases, paddings),
        "ref cl": lambda: reference(x_cl, w_cl, biases, paddings),
        "ours nchw": lambda: branch_conv(x, weights, biases, paddings, relu=True),
        "ours cl": lambda: branch_conv(x_cl, w_cl, biases, paddings, relu=True),
    }
    with torch.inference_mode():
        torch.testing.assert_close(
            variants["ours cl"](), variants["ref nchw"](), rtol=1e-3, atol=1e-3
        )
    timings = interleaved_timings(variants, repeats=repeats, warmup=3)
    best_ref = min(("ref nchw", "ref cl"), key=lambda k: timings[k].median)
    best_ours = min(("ours nchw", "ours cl"), key=lambda k: timings[k].median)
    return {
        "case": case.name,
        "batch": batch,
        "timings": timings,
        "best_ref": best_ref,
        "best_ours": best_ours,
        "ratio": timings[best_ref].median / timings[best_ours].median,
        "mem_ref": peak_extra_rss_bytes(variants[best_ref], repeats=5),
        "mem_ours": peak_extra_rss_bytes(variants[best_ours], repeats=5),
        "macs": case_macs(case),
    }


def run(quick: bool = False, batches: Sequence[int] = (1, 32)) -> list[dict]:
    """Measures every case (a small subset when ``quick``) at each batch size; returns the rows."""
    cases = QUICK if quick else INCEPTION_1X1 + REPARAM_PAIRS
    rows = []
    for batch in batches:
        repeats = (15 if quick else 40) if batch == 1 else (5 if quick else 12)
        for case in cases:
            rows.append(measure(case, batch, repeats))
    return rows


def format_table(rows: list[dict], peak_gflops: float) -> str:
    """The ratio table (medians in ms; memory in MiB; throughput and bound against
    ``peak_gflops``)."""
    head = (
        f"{'case':<14}{'N':>3} {'ref nchw':>9} {'ref cl':>9} {'ours nchw':>10} {'ours cl':>9} "
        f"{'ratio':>6}  {'best ref/ours':<17}{'MiB ref':>8}{'MiB ours':>9}"
        f"{'GF/s ref':>9}{'GF/s ours':>10}{'bound':>7}"
    )
    lines = [head, "-" * len(head)]

    def gflops(row: dict, variant: str) -> float:
        return achieved_gflops(row["macs"], row["batch"], row["timings"][variant].median)

    for r in rows:
        t = r["timings"]
        lines.append(
            f"{r['case']:<14}{r['batch']:>3} {t['ref nchw'].median:>9.3f} {t['ref cl'].median:>9.3f} "
            f"{t['ours nchw'].median:>10.3f} {t['ours cl'].median:>9.3f} {r['ratio']:>5.2f}x  "
            f"{r['best_ref'].split()[1] + '/' + r['best_ours'].split()[1]:<17}"
            f"{r['mem_ref'] / 2**20:>8.2f}{r['mem_ours'] / 2**20:>9.2f}"
            f"{gflops(r, r['best_ref']):>9.0f}{gflops(r, r['best_ours']):>10.0f}"
            f"{peak_gflops / gflops(r, r['best_ref']):>6.2f}x"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` (``--quick``, ``--threads``, ``--batches``), runs the benchmark, prints the
    table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 cases, fewer repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--batches", type=int_list, default=[1, 32], help="e.g. 1,8 (default 1,32)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    configure_allocator()  # before any timing, so every row runs under the same allocator setting
    peak = peak_conv_gflops()
    rows = run(quick=args.quick, batches=args.batches)
    print(format_table(rows, peak))
    for batch in sorted({r["batch"] for r in rows}):
        ratios = [r["ratio"] for r in rows if r["batch"] == batch]
        print(f"batch {batch}: ratio min {min(ratios):.2f}x, median "
              f"{sorted(ratios)[len(ratios) // 2]:.2f}x, max {max(ratios):.2f}x")  # fmt: skip
        for layout in ("nchw", "cl"):  # each layout against the reference in the same layout
            same = [
                r["timings"][f"ref {layout}"].median / r["timings"][f"ours {layout}"].median
                for r in rows
                if r["batch"] == batch
            ]
            print(f"  {layout} ref/ours: min {min(same):.2f}x, max {max(same):.2f}x")
    print(f"fp32 peak: {peak:.0f} GFLOP/s (3x3 convolution 256->256 at 28x28, batch 32)")
    print(machine_line())
    return 0
