#!/usr/bin/env python
"""The benchmark suite: the DeepRebirth paper's tables rebuilt on this machine (``deeprebirth bench``).

    python scripts/benchmark.py --quick                 # every page, small settings, minutes
    python scripts/benchmark.py --threads 2             # full run: 224x224, batches 1 and 8
    python scripts/benchmark.py --sections latency --batches 1,16 --out /tmp/results

Writes Markdown tables and PNG plots to docs/results/ (``--out``); see deeprebirth/bench/.
"""

from __future__ import annotations

import sys

from deeprebirth.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
