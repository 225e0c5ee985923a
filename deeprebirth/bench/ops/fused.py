"""Benchmarks both operators against their unfused ATen sequences, in one process.

Runs :mod:`deeprebirth.bench.ops.conv_pool` (``scripts/bench_conv_pool.py``: GoogLeNet
conv1/conv2, ResNet-50 stem) and then :mod:`deeprebirth.bench.ops.branch_conv`
(``scripts/bench_branch_conv.py``: every Inception module's 1x1 convs, a 3x3+5x5 pair), each with
the same arguments (``--quick``, ``--threads N``). Not a test: it prints ratios and never fails CI.

    python scripts/bench_ops.py --threads 2
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from deeprebirth.bench.ops import branch_conv, conv_pool

# Printed headings (the scripts' names, as in docs/results/bench_ops.txt) and their benchmarks.
BENCHMARKS = {"bench_conv_pool": conv_pool.main, "bench_branch_conv": branch_conv.main}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every operator benchmark; returns the worst exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    status = 0
    for name, run in BENCHMARKS.items():
        print(f"\n===== {name} =====", flush=True)
        status = max(status, run(argv) or 0)
    return status
