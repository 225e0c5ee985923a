"""Portable models: deeprebirth's fused modules replaced by the standard layers they compute.

A portable model needs no deeprebirth library when loaded (stock LibTorch, ONNX Runtime,
ExecuTorch). The replacement is exact: :class:`~deeprebirth.ops.ConvPool2d` becomes
``Conv2d -> [ReLU] -> MaxPool2d | AvgPool2d(count_include_pad=True)`` and
:class:`~deeprebirth.ops.BranchConv2d` becomes its :attr:`~deeprebirth.ops.BranchConv2d.branches`
(``Conv2d`` each) -> [ReLU] -> ``cat``, the same sequences as ``deeprebirth.ops._reference``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from deeprebirth.ops import BranchConv2d, ConvPool2d
from deeprebirth.surgery.modules import (
    ConcatBranches,
    PackedConv2d,
    PackedConvConcat,
    PackedResidualBlock,
    PackedResidualStage,
)


def conv_pool_as_standard(fused: ConvPool2d) -> nn.Sequential:
    """The ``Conv2d -> [ReLU] -> pool`` sequence equal to ``fused`` (weights copied).

    Example:
        >>> fused = ConvPool2d(3, 8, 3, padding=1, pool_kernel=2)
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.allclose(conv_pool_as_standard(fused)(x), fused(x), atol=1e-6)
        True
    """
    weight = fused.weight
    conv = nn.Conv2d(
        fused.in_channels,
        fused.out_channels,
        tuple(weight.shape[2:]),
        stride=tuple(fused.stride),
        padding=tuple(fused.padding),
        dilation=tuple(fused.dilation),
        groups=fused.groups,
        bias=fused.bias is not None,
    ).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if fused.bias is not None:
            conv.bias.copy_(fused.bias)
    pool_args = (tuple(fused.pool_kernel), tuple(fused.pool_stride), tuple(fused.pool_padding))
    if fused.pool == "max":
        pool: nn.Module = nn.MaxPool2d(*pool_args, ceil_mode=fused.ceil_mode)
    else:
        pool = nn.AvgPool2d(*pool_args, ceil_mode=fused.ceil_mode, count_include_pad=True)
    layers: list[nn.Module] = [conv] + ([nn.ReLU()] if fused.relu else []) + [pool]
    return nn.Sequential(*layers)


def branch_conv_as_standard(merged: BranchConv2d) -> ConcatBranches:
    """The ``cat`` of standard convolutions equal to ``merged`` (its :attr:`branches`)."""
    return ConcatBranches(merged.branches, merged.relu)


def uses_deeprebirth_ops(model: nn.Module) -> bool:
    """Whether ``model`` contains a module that calls a ``torch.ops.deeprebirth`` operator
    (PackedConv2d does in TorchScript, for its small calls)."""
    return any(isinstance(m, (ConvPool2d, BranchConv2d, PackedConv2d)) for m in model.modules())


def make_portable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ConvPool2d / BranchConv2d (and PackedConv2d /
    PackedConvConcat / PackedResidualBlock / PackedResidualStage, CPU runtime details) replaced by
    standard layers.

    The input model is not modified; a model without deeprebirth modules is returned as a copy.

    Example:
        >>> net = nn.Sequential(ConvPool2d(3, 4, 3, pool_kernel=2)).eval()
        >>> uses_deeprebirth_ops(make_portable(net))
        False
    """
    portable = copy.deepcopy(model)
    _replace_in_place(portable)
    return portable


def _replace_in_place(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, ConvPool2d):
            setattr(module, name, conv_pool_as_standard(child))
        elif isinstance(child, BranchConv2d):
            setattr(module, name, branch_conv_as_standard(child))
        elif isinstance(
            child, (PackedConv2d, PackedConvConcat, PackedResidualBlock, PackedResidualStage)
        ):
            setattr(module, name, child.to_standard())
        else:
            _replace_in_place(child)
