#!/usr/bin/env python
"""The fused ``conv_pool`` operator against conv2d -> ReLU -> max-pool (GoogLeNet conv1/conv2,
ResNet-50 stem; not a test). The benchmark is :mod:`deeprebirth.bench.ops.conv_pool`.
Options: ``--help``.
"""

import sys

from deeprebirth.bench.ops.conv_pool import main

if __name__ == "__main__":
    sys.exit(main())
