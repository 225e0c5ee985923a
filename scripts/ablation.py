#!/usr/bin/env python
"""The DeepRebirth ablation (new-layer init x new-layer LR), one finetune run per variant, as a
Markdown table. The code is :mod:`deeprebirth.bench.ablation`. Options: ``--help``.
"""

import sys

from deeprebirth.bench.ablation import main

if __name__ == "__main__":
    sys.exit(main())
