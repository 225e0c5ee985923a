#!/usr/bin/env python
"""The ``direct_conv`` kernel against conv2d and ATen's im2col on every layer of a finetune
config's teacher and student (not a test). The benchmark is
:mod:`deeprebirth.bench.ops.direct_conv`. Options: ``--help``.
"""

import sys

from deeprebirth.bench.ops.direct_conv import main

if __name__ == "__main__":
    sys.exit(main())
