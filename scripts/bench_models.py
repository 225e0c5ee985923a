#!/usr/bin/env python
"""Latency and peak activation memory of slimmed vs original models (bvlc GoogLeNet, ResNet-50,
torchvision GoogLeNet vs TorchScript; not a test). The benchmark is
:mod:`deeprebirth.bench.slim_models`. Options: ``--help``.
"""

import sys

from deeprebirth.bench.slim_models import main

if __name__ == "__main__":
    sys.exit(main())
