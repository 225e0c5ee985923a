"""Max pooling without indices: ``max_pool2d``.

ATen's CPU ``max_pool2d`` runs ``max_pool2d_with_indices`` and writes the int64 index of every
maximum, which only its backward reads. ``deeprebirth::max_pool2d`` pools channels_last float
inputs with ``conv_pool``'s pooling epilogue instead and writes the values only;
``InferenceMaxPool2d`` runs it in deployed models. docs/kernels.md has the measurements.
"""

from __future__ import annotations

import torch

from deeprebirth.ops import _library
from deeprebirth.ops._args import pair

_library.load_extension()


def max_pool2d(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """``torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)``
    (dilation 1; ``stride`` defaults to ``kernel_size``): the same values, NaN propagated, in
    ``x``'s memory format.

    A CPU ``x`` that is 4-D, float32 or float64 and channels_last takes deeprebirth's kernel; any
    other input (and a call that needs a gradient, through autograd) takes ATen's, which also
    raises ATen's errors for arguments it rejects. CPU tensors only.

    Example:
        >>> x = torch.randn(1, 16, 9, 9).contiguous(memory_format=torch.channels_last)
        >>> y = max_pool2d(x, 3, 2, ceil_mode=True)
        >>> torch.equal(y, torch.nn.functional.max_pool2d(x, 3, 2, ceil_mode=True))
        True
    """
    kernel = pair(kernel_size, "kernel_size")
    strides = kernel if stride is None else pair(stride, "stride")
    return torch.ops.deeprebirth.max_pool2d(x, kernel, strides, pair(padding, "padding"), ceil_mode)
