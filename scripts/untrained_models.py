#!/usr/bin/env python
"""Writes a finetune config's teacher and student with random weights, for latency benchmarks.
The code is :mod:`deeprebirth.bench.untrained_models`. Options: ``--help``.
"""

import sys

from deeprebirth.bench.untrained_models import main

if __name__ == "__main__":
    sys.exit(main())
