"""An exactly fused GoogLeNet: a stand-in "slim" model that holds deeprebirth operators.

Used by the export tests and ``scripts/bench_runner.py`` while the surgery API
(``deeprebirth.slim``) is not available: conv1's ``conv -> ReLU -> pool`` becomes one
:class:`~deeprebirth.ops.ConvPool2d` and each Inception module's three 1x1 convolutions over its
input become one :class:`~deeprebirth.ops.BranchConv2d`. Both rewrites are exact (same logits).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from deeprebirth.models.bvlc_googlenet import Inception
from deeprebirth.ops import BranchConv2d, ConvPool2d


class MergedInception(nn.Module):
    """An Inception module whose three 1x1 convolutions run as one BranchConv2d (exact).

    Shape:
        as the source :class:`~deeprebirth.models.bvlc_googlenet.Inception` (all branches present).
    """

    def __init__(self, inception: Inception) -> None:
        super().__init__()
        reducers = [inception.conv_1x1, inception.conv_3x3_reduce, inception.conv_5x5_reduce]
        self.merged = BranchConv2d.from_convs(reducers, relu=True)
        self.split_sizes = [conv.out_channels for conv in reducers]
        self.conv_3x3, self.conv_5x5 = inception.conv_3x3, inception.conv_5x5
        self.pool, self.pool_proj = inception.pool, inception.pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones, reduced_3x3, reduced_5x5 = torch.split(self.merged(x), self.split_sizes, 1)
        return torch.cat(
            [
                ones,
                torch.relu(self.conv_3x3(reduced_3x3)),
                torch.relu(self.conv_5x5(reduced_5x5)),
                torch.relu(self.pool_proj(self.pool(x))),
            ],
            1,
        )


def fuse_googlenet_exactly(model: nn.Module, inceptions: Sequence[str] | None = None) -> nn.Module:
    """A copy of a ``bvlc_googlenet`` with conv1 fused and the named Inception modules merged.

    Args:
        model: a :class:`~deeprebirth.models.BVLCGoogLeNet`.
        inceptions: module names to merge (default: every Inception module).

    Example:
        >>> from deeprebirth.models import bvlc_googlenet
        >>> net = bvlc_googlenet(num_classes=10, width=0.25).eval()
        >>> fused = fuse_googlenet_exactly(net, ["inception_3a"])
        >>> x = torch.randn(1, 3, 96, 96)
        >>> torch.allclose(fused(x), net(x), atol=1e-5)
        True
    """
    fused = copy.deepcopy(model)
    fused.conv1.conv = ConvPool2d.from_modules(model.conv1.conv, model.conv1.pool, relu=True)
    fused.conv1.relu, fused.conv1.pool = nn.Identity(), nn.Identity()
    names = [n for n, m in model.named_children() if isinstance(m, Inception)]
    for name in names if inceptions is None else inceptions:
        setattr(fused, name, MergedInception(getattr(model, name)))
    return fused.eval()
