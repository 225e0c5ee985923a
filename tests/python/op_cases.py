"""Argument sets shared by the operator tests."""

from __future__ import annotations

import torch


def valid_conv_pool_kwargs(**overrides):
    """A small valid ``conv_pool`` call as keyword arguments, with ``overrides`` applied."""
    kwargs = dict(
        x=torch.randn(1, 4, 8, 8), w=torch.randn(4, 4, 3, 3), b=None, stride=[1, 1],
        padding=[0, 0], dilation=[1, 1], groups=1, pool="max", pool_kernel=[2, 2],
        pool_stride=[2, 2], pool_padding=[0, 0], ceil_mode=False, relu=True,
    )  # fmt: skip
    kwargs.update(overrides)
    return kwargs
