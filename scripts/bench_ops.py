#!/usr/bin/env python3
"""Benchmarks both operators against their unfused ATen sequences, in one process.

Runs ``scripts/bench_conv_pool.py`` (GoogLeNet conv1/conv2, ResNet-50 stem) and then
``scripts/bench_branch_conv.py`` (every Inception module's 1x1 convs, a 3x3+5x5 pair), each with
the same arguments (``--quick``, ``--threads N``). Not a test: it prints ratios and never fails CI.

    python scripts/bench_ops.py --threads 2
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
BENCHMARKS = ("bench_conv_pool", "bench_branch_conv")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every operator benchmark; returns the worst exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    status = 0
    for name in BENCHMARKS:
        print(f"\n===== {name} =====", flush=True)
        status = max(status, _load(name).main(argv) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
