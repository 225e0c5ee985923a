#!/usr/bin/env python
"""Original vs slim GoogLeNet in the C++ runner (``deeprebirth-run --bench``) next to eager
PyTorch (not a test). The benchmark is :mod:`deeprebirth.bench.runner`. Options: ``--help``.
"""

import sys

from deeprebirth.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
