#!/usr/bin/env python
"""Both fused operators (``bench_conv_pool.py``, then ``bench_branch_conv.py``) with the same
arguments, in one process (not a test). The code is :mod:`deeprebirth.bench.ops.fused`.
Options: ``--help``.
"""

import sys

from deeprebirth.bench.ops.fused import main

if __name__ == "__main__":
    sys.exit(main())
