"""Former home of the modules rules put into models; they live in :mod:`deeprebirth.nn` now.

Kept so that existing imports and pickles naming ``deeprebirth.surgery.modules`` still load.
"""

from deeprebirth.nn.branch_conv import ConcatBranches
from deeprebirth.nn.packed_conv import ConvConcat, PackedConv2d, PackedConvConcat, packing_problem
from deeprebirth.nn.residual import PackedResidualBlock, PackedResidualStage, ResidualBlock

__all__ = [
    "ConcatBranches",
    "ConvConcat",
    "PackedConv2d",
    "PackedConvConcat",
    "PackedResidualBlock",
    "PackedResidualStage",
    "ResidualBlock",
    "packing_problem",
]
