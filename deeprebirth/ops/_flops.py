"""FLOP formulas of the deeprebirth operators for ``torch.utils.flop_counter``.

``FlopCounterMode`` counts the multiply-adds of convolutions and matrix products; an operator
without a formula counts as zero, so a deployed model would look free. Each formula here counts
the convolutions the operator computes, exactly as ``aten.convolution`` on the same shapes
(pooling, bias and ReLU are not counted there either), so a deployed model and its portable form
report the same work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from deeprebirth.ops import _library

_library.load_extension()
_ops = torch.ops.deeprebirth


def _conv_flops(
    x: Sequence[int],
    w: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int] = (1, 1),
) -> int:
    """FLOPs of ``conv2d(x, w)`` from shapes (the output size computed as ATen does)."""
    spatial = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(x[2:], w[2:], stride, padding, dilation, strict=True)
    ]
    if min(spatial, default=1) <= 0:
        return 0
    return conv_flop_count(list(x), list(w), [x[0], w[0], *spatial])


@register_flop_formula(_ops.conv_pool)
def _conv_pool_flop(x, w, b, stride, padding, dilation, *args, out_shape=None, **kwargs) -> int:
    return _conv_flops(x, w, stride, padding, dilation)


@register_flop_formula(_ops.branch_conv)
def _branch_conv_flop(x, weights, biases, paddings, stride, relu, out_shape=None, **kwargs) -> int:
    return sum(
        _conv_flops(x, w, (stride, stride), (p, p)) for w, p in zip(weights, paddings, strict=True)
    )


def _packed_shape(packed_w: Sequence[int], out_channels: int) -> list[int]:
    return [out_channels, *packed_w[1:4]]


@register_flop_formula(_ops.direct_conv)
def _direct_conv_flop(
    x, packed_w, b, out_channels, stride, padding, relu, out_shape=None, **kwargs
) -> int:
    return _conv_flops(x, _packed_shape(packed_w, out_channels), stride, padding)


@register_flop_formula(_ops.direct_conv_cat)
def _direct_conv_cat_flop(
    xs, packed_ws, bs, out_channels, strides, paddings, relu, out_shape=None, **kwargs
) -> int:
    return sum(
        _conv_flops(x, _packed_shape(w, c), strides[2 * i : 2 * i + 2], paddings[2 * i : 2 * i + 2])
        for i, (x, w, c) in enumerate(zip(xs, packed_ws, out_channels, strict=True))
    )


@register_flop_formula(_ops.small_conv2d)
def _small_conv2d_flop(
    x, w, packed_w, b, stride, padding, dilation, groups, *args, out_shape=None, **kwargs
) -> int:
    return _conv_flops(x, w, stride, padding, dilation)


@register_flop_formula(_ops.small_conv2d_add_)
def _small_conv2d_add_flop(
    residual, x, w, packed_w, b, stride, padding, dilation, groups, *args, out_shape=None, **kwargs
) -> int:
    return _conv_flops(x, w, stride, padding, dilation)


@register_flop_formula(_ops.linear)
def _linear_flop(x, w, b, out_shape=None, **kwargs) -> int:
    # as aten.addmm/mm count x @ w.T (the bias is not counted there either)
    rows = 1
    for size in x[:-1]:
        rows *= size
    return 2 * rows * w[0] * w[1]


@register_flop_formula(_ops.onednn_conv2d)
def _onednn_conv2d_flop(
    x, w, b, stride, padding, dilation, groups, relu, out_shape=None, **kwargs
) -> int:
    return _conv_flops(x, w, stride, padding, dilation)


@register_flop_formula(_ops.onednn_conv2d_add_)
def _onednn_conv2d_add_flop(
    residual, x, w, b, stride, padding, dilation, groups, relu, out_shape=None, **kwargs
) -> int:
    return _conv_flops(x, w, stride, padding, dilation)


@register_flop_formula(_ops.small_conv2d_cat)
def _small_conv2d_cat_flop(
    xs, ws, packed_ws, bs, strides, paddings, *args, out_shape=None, **kwargs
) -> int:
    return sum(
        _conv_flops(x, w, strides[2 * i : 2 * i + 2], paddings[2 * i : 2 * i + 2])
        for i, (x, w) in enumerate(zip(xs, ws, strict=True))
    )


@register_flop_formula(_ops.winograd_conv2d)
def _winograd_conv2d_flop(
    x, packed_w, b, out_channels, padding, relu, out_shape=None, **kwargs
) -> int:
    # The convolution's work as aten.convolution counts it (Winograd does 2.25x fewer
    # multiplications; counting them would make the deployed model differ from its portable form).
    return _conv_flops(x, (out_channels, x[1], 3, 3), (1, 1), padding)


# PackedConv2d runs its large layers through oneDNN's fused convolutions, which torch's own table
# does not cover; without these their work is invisible to FlopCounterMode as well.
def _onednn_conv_flop(x, *args, out_shape=None, **kwargs) -> int:
    # (X, W, B, ...) unary; (X, other, W, B, ...) binary; (other, X, W, B, ...) in-place binary.
    # Only the batch size is read from the first argument, which all three share with the output.
    w = args[1] if args[1] is not None and len(args[1]) == 4 else args[0]
    return conv_flop_count(list(x), list(w), list(out_shape))


for _name in ("_convolution_pointwise", "_convolution_pointwise_"):
    _packet = getattr(torch.ops.mkldnn, _name, None)
    if _packet is not None and _packet not in torch.utils.flop_counter.flop_registry:
        register_flop_formula(_packet)(_onednn_conv_flop)
