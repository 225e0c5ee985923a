#!/usr/bin/env python
"""Latency of two saved models side by side, per thread count, batch and runtime (not a test).
The benchmark is :mod:`deeprebirth.bench.compare_models`. Options: ``--help``.
"""

import sys

from deeprebirth.bench.compare_models import main

if __name__ == "__main__":
    sys.exit(main())
