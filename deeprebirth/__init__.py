"""deeprebirth: make trained CNNs faster by regenerating tensor layers (DeepRebirth, AAAI 2018).

Importing the package loads the compiled operator library, so ``torch.ops.deeprebirth.conv_pool``
and ``torch.ops.deeprebirth.branch_conv`` are available afterwards.

Example:
    >>> import deeprebirth
    >>> deeprebirth.build_info()["version"]
    '0.1.0'
"""

from deeprebirth import export, models, ops
from deeprebirth._version import __version__
from deeprebirth.ops import build_info

__all__ = ["__version__", "build_info", "export", "models", "ops"]
