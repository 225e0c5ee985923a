"""The operators' definitions as plain sequences of standard PyTorch ops.

These are what the fused operators compute. They serve the fake (shape) implementations, the
``portable`` export (graphs that need no deeprebirth library) and readers. Tests do not use them as
their reference: tests call ``torch.nn.functional`` themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def conv_pool_reference(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    pool: str,
    pool_kernel: Sequence[int],
    pool_stride: Sequence[int],
    pool_padding: Sequence[int],
    ceil_mode: bool,
    relu: bool,
) -> torch.Tensor:
    """``pool(relu?(conv2d(x, w, b)))`` with max or average (count_include_pad) pooling."""
    y = F.conv2d(x, w, b, list(stride), list(padding), list(dilation), groups)
    if relu:
        y = F.relu(y)
    if pool == "max":
        return F.max_pool2d(
            y, list(pool_kernel), list(pool_stride), list(pool_padding), 1, ceil_mode
        )
    if pool == "avg":
        return F.avg_pool2d(y, list(pool_kernel), list(pool_stride), list(pool_padding), ceil_mode)
    raise RuntimeError(f'conv_pool: expected pool to be "max" or "avg", but got "{pool}"')


def conv_pool_memory_format(t: torch.Tensor) -> torch.memory_format:
    """The memory format the conv_pool kernels give their output (t = x) and gradients (t = x, w).

    ``torch.channels_last`` when ``t`` is channels-last contiguous and not also plain contiguous,
    else ``torch.contiguous_format``; the same rule as ``conv_pool_memory_format`` in
    csrc/ops/conv_pool/conv_pool_tiling.h.
    """
    channels_last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def branch_conv_reference(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    paddings: Sequence[int],
    stride: int,
    relu: bool,
) -> torch.Tensor:
    """``cat([relu?(conv2d(x, w_i, b_i, stride, p_i))], dim=1)``."""
    outputs = []
    for w, b, p in zip(weights, biases, paddings, strict=True):
        y = F.conv2d(x, w, b, stride, p)
        outputs.append(F.relu(y) if relu else y)
    return torch.cat(outputs, dim=1)


def branch_conv_output_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of ``branch_conv``'s output and of its gradient w.r.t. ``x``.

    ``torch.channels_last`` when ``x`` is channels_last-contiguous but not plainly contiguous,
    else ``torch.contiguous_format`` (the rule of the C++ ``branch_conv_output_format``).
    """
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
