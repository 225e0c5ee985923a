"""Modules that rules put into models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConcatBranches(nn.Module):
    """Runs each branch on the same input and concatenates the outputs along channels.

    The branch-slimmed form of torchvision's GoogLeNet ``Inception`` (two branches left).

    Shape:
        ``(N, C, H, W) -> (N, sum of branch widths, H, W)``.

    Example:
        >>> m = ConcatBranches([nn.Conv2d(4, 3, 1), nn.Conv2d(4, 5, 3, padding=1)])
        >>> m(torch.zeros(1, 4, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(self, branches: Sequence[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)
