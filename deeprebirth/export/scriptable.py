"""TorchScript-compatible forms of deeprebirth's modules (same operators, same parameters).

``BranchConv2d.forward`` builds its weight list with ``list(ParameterList)``, which
``torch.jit.script`` cannot compile, and ``torch.jit.trace`` cannot record the operator's
``Tensor?[]`` bias argument. :class:`ScriptableBranchConv2d` calls the same
``torch.ops.deeprebirth.branch_conv`` with the same tensors in a form TorchScript compiles, so
native TorchScript exports keep the fused operator.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from deeprebirth.ops import BranchConv2d


class ScriptableBranchConv2d(nn.Module):
    """``torch.ops.deeprebirth.branch_conv`` over the parameters of a :class:`BranchConv2d`.

    Shape:
        ``(N, C_in, H, W) -> (N, sum C_i, H_out, W_out)``, equal to the source module.

    Example:
        >>> source = BranchConv2d(8, [4, 2], [1, 3])
        >>> x = torch.randn(1, 8, 6, 6)
        >>> torch.equal(ScriptableBranchConv2d(source)(x), source(x))
        True
    """

    def __init__(self, source: BranchConv2d) -> None:
        super().__init__()
        self.weights = source.weights
        self.biases = source.biases if source.biases is not None else nn.ParameterList()
        self.has_bias = source.biases is not None
        self.paddings: list[int] = list(source.paddings)
        self.stride: int = source.stride
        self.relu: bool = source.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights: list[torch.Tensor] = []
        for weight in self.weights:
            weights.append(weight)
        biases: list[torch.Tensor | None] = []
        if self.has_bias:
            for bias in self.biases:
                biases.append(bias)
        else:
            for _ in range(len(weights)):
                biases.append(None)
        return torch.ops.deeprebirth.branch_conv(
            x, weights, biases, self.paddings, self.stride, self.relu
        )


def make_scriptable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every BranchConv2d in its scriptable form (no new math)."""
    scriptable = copy.deepcopy(model)
    _replace_in_place(scriptable)
    return scriptable


def _replace_in_place(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, BranchConv2d):
            setattr(module, name, ScriptableBranchConv2d(child))
        else:
            _replace_in_place(child)
