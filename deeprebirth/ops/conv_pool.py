"""Fused convolution -> [ReLU] -> pooling: ``deeprebirth.ops.conv_pool``.

Its module form, :class:`~deeprebirth.nn.ConvPool2d`, lives in :mod:`deeprebirth.nn`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deeprebirth.ops import _library
from deeprebirth.ops._args import pair

_library.load_extension()

IntOrPair = int | Sequence[int]


def conv_pool(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    pool: str = "max",
    pool_kernel: IntOrPair = 3,
    pool_stride: IntOrPair | None = None,
    pool_padding: IntOrPair = 0,
    ceil_mode: bool = False,
    relu: bool = True,
) -> torch.Tensor:
    """``pool(relu?(conv2d(x, weight, bias)))`` in one operator (``torch.ops.deeprebirth.conv_pool``).

    Args:
        x: input ``(N, C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW)``.
        bias: ``(C_out,)`` or None.
        stride, padding, dilation, groups: as in :func:`torch.nn.functional.conv2d`.
        pool: ``"max"`` or ``"avg"`` (average counts padded cells, like ``nn.AvgPool2d``).
        pool_kernel, pool_stride, pool_padding, ceil_mode: as in ``nn.MaxPool2d``;
            ``pool_stride`` defaults to ``pool_kernel``.
        relu: apply ReLU between the convolution and the pooling.

    Returns:
        ``(N, C_out, H_out, W_out)``, equal to the unfused sequence to rounding. On the CPU,
        float32 layers with at most 4 input channels (first layers: GoogLeNet conv1, the ResNet
        stem) convolve with the library's own direct kernel, and float32 3x3 stride-1 layers with
        at least 8 input and 16 output channels by the Winograd F(2x2, 3x3) algorithm (2.25x
        fewer multiply-adds, errors the size of ATen's convolution); setting
        ``DEEPREBIRTH_CONV_POOL_DIRECT=0`` or ``DEEPREBIRTH_CONV_POOL_WINOGRAD=0`` before the
        library loads sends those layers to oneDNN instead. NaN and infinities reach the output
        where and as the unfused sequence has them, on every route: Winograd's transforms add and
        subtract inputs, which would spread a NaN or an infinity over a 2x2 output block, so a
        call whose ``x`` or ``weight`` holds one convolves with oneDNN instead. (Finite values so
        large that the convolution's sums overflow float32 may overflow in other places than in
        ATen's, on any route, as ATen's own algorithms differ.) Differentiable twice: the backward
        recomputes the convolution, and under ``create_graph=True`` it runs as ATen operations,
        which autograd differentiates again (``gradgradcheck`` holds).

    Raises:
        RuntimeError: bad shapes, dtypes, devices or sizes (an empty kernel, no input channels,
            strides <= 0, ...); the message names the argument.

    Example:
        >>> x = torch.randn(1, 3, 224, 224)
        >>> w = torch.randn(64, 3, 7, 7)
        >>> conv_pool(x, w, None, stride=2, padding=3, pool_kernel=3, pool_stride=2,
        ...           ceil_mode=True).shape
        torch.Size([1, 64, 56, 56])
    """
    return torch.ops.deeprebirth.conv_pool(
        x,
        weight,
        bias,
        pair(stride, "stride"),
        pair(padding, "padding"),
        pair(dilation, "dilation"),
        groups,
        pool,
        pair(pool_kernel, "pool_kernel"),
        pair(pool_kernel if pool_stride is None else pool_stride, "pool_stride"),
        pair(pool_padding, "pool_padding"),
        ceil_mode,
        relu,
    )


def __getattr__(name: str):
    # deeprebirth.ops.conv_pool.ConvPool2d from before deeprebirth.nn (pickles name it), read
    # lazily: deeprebirth.nn imports this package.
    if name == "ConvPool2d":
        from deeprebirth.nn.conv_pool import ConvPool2d

        return ConvPool2d
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
