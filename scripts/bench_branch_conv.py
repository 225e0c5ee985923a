#!/usr/bin/env python
"""The ``branch_conv`` operator against separate conv2d + ReLU + cat (GoogLeNet's Inception 1x1
convs; not a test). The benchmark is :mod:`deeprebirth.bench.ops.branch_conv`. Options: ``--help``.
"""

import sys

from deeprebirth.bench.ops.branch_conv import main

if __name__ == "__main__":
    sys.exit(main())
