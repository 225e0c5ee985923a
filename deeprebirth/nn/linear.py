""":class:`InferenceLinear`: ``nn.Linear`` on ``deeprebirth::linear``, which splits the output
features across the intra-op threads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import deeprebirth.ops  # noqa: F401  (loads torch.ops.deeprebirth.linear)
from deeprebirth.nn._compile import compiling_for_inductor


class InferenceLinear(nn.Linear):
    """An ``nn.Linear`` whose CPU calls run :func:`deeprebirth.ops.linear`: the same values (within
    a matrix product's rounding), gradients through ATen's linear where one is needed.
    The ``pack_conv`` rule puts it in place of ``nn.Linear`` layers, sharing their parameters;
    :meth:`to_standard` gives the ``nn.Linear`` back.

    Example:
        >>> fc = InferenceLinear.from_linear(nn.Linear(64, 10))
        >>> x = torch.randn(3, 64)
        >>> torch.allclose(fc(x), fc.to_standard()(x), atol=1e-6)
        True
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> InferenceLinear:
        """The inference form of ``linear``, holding the same weight and bias parameters."""
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, "meta")
        module.weight = linear.weight
        module.bias = linear.bias
        return module.train(linear.training)

    def to_standard(self) -> nn.Module:
        """The ``nn.Linear`` this module computes, holding the same parameters."""
        standard = nn.Linear(self.in_features, self.out_features, self.bias is not None, "meta")
        standard.weight = self.weight
        standard.bias = self.bias
        return standard.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._eager_forward(x)
        if x.is_cpu:
            return torch.ops.deeprebirth.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    @torch.jit.unused
    def _eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.compile gets ATen's linear, which inductor can fuse (_compile.py)
        if x.is_cpu and not compiling_for_inductor():
            return torch.ops.deeprebirth.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
