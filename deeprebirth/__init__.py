"""deeprebirth: make trained CNNs faster by regenerating tensor layers (DeepRebirth, AAAI 2018).

Importing the package loads the compiled operator library, so ``torch.ops.deeprebirth.conv_pool``
and ``torch.ops.deeprebirth.branch_conv`` are available afterwards.

Example:
    >>> import deeprebirth
    >>> deeprebirth.build_info()["version"]
    '0.1.0'
"""

from deeprebirth import export, models, nn, ops, surgery
from deeprebirth._version import __version__
from deeprebirth.cpp_package import cmake_prefix_path
from deeprebirth.ops import build_info
from deeprebirth.surgery import plan, register_rule, slim, verify

__all__ = ["__version__", "build_info", "export", "models", "nn", "ops", "surgery"]
__all__ += ["cmake_prefix_path", "plan", "register_rule", "slim", "verify"]
