"""deeprebirth's operators: Python wrappers and ``nn.Module`` forms.

- :func:`conv_pool` / :class:`ConvPool2d`: convolution -> [ReLU] -> max/avg pooling, fused.
- :func:`branch_conv` / :class:`BranchConv2d`: parallel convolutions over one input, concatenated.
"""

from deeprebirth.ops import _fake  # noqa: F401  (registers fake implementations)
from deeprebirth.ops._library import build_info, load_extension
from deeprebirth.ops.branch_conv import BranchConv2d, branch_conv
from deeprebirth.ops.conv_pool import ConvPool2d, conv_pool

__all__ = [
    "BranchConv2d",
    "ConvPool2d",
    "branch_conv",
    "build_info",
    "conv_pool",
    "load_extension",
]
