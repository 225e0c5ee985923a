"""deeprebirth's operators: Python wrappers and ``nn.Module`` forms.

- :func:`conv_pool` / :class:`ConvPool2d`: convolution -> [ReLU] -> max/avg pooling, fused.
- :func:`branch_conv` / :class:`BranchConv2d`: parallel convolutions over one input, concatenated.
- :func:`direct_conv` / :func:`small_conv2d` / :func:`small_conv2d_cat`: small layers computed
  directly on a packed weight (:func:`direct_conv_pack`); ``PackedConv2d`` runs them;
  :func:`direct_conv_isa` names the kernel's instruction set.
"""

from deeprebirth.ops import (
    _fake,  # noqa: F401  (registers fake implementations)
    _flops,  # noqa: F401  (registers FLOP formulas)
)
from deeprebirth.ops._library import build_info, load_extension
from deeprebirth.ops.branch_conv import BranchConv2d, branch_conv
from deeprebirth.ops.conv_pool import ConvPool2d, conv_pool
from deeprebirth.ops.direct_conv import (
    direct_conv,
    direct_conv_isa,
    direct_conv_pack,
    small_conv2d,
    small_conv2d_cat,
)

__all__ = [
    "BranchConv2d",
    "ConvPool2d",
    "branch_conv",
    "build_info",
    "conv_pool",
    "direct_conv",
    "direct_conv_isa",
    "direct_conv_pack",
    "load_extension",
    "small_conv2d",
    "small_conv2d_cat",
]
