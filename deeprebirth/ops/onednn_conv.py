"""oneDNN convolutions on frozen weights as primitives kept per layer: ``onednn_conv2d`` and
``onednn_conv2d_add_``.

ATen's oneDNN convolution builds its primitive again on every call (20-25 µs on the CPUs measured,
as much as a small layer's arithmetic at batch 1). These operators make one executable primitive
per weight (at its version), input shape and epilogue on the first call and only execute it
afterwards, with the weight reordered once into the layout the primitive reads. ``small_conv2d``
calls them for its oneDNN layers; they are public for C++ and for profiles, where each layer shows
as one of them. They need the library built with oneDNN (``build_info()["onednn"]``) and a
channels_last output; an input in another layout is read through a channels_last copy (the first
layer of a network), and any other call computes the same with ATen.
"""

from __future__ import annotations

import torch

from deeprebirth.ops import _library
from deeprebirth.ops._args import pair

_library.load_extension()


def onednn_conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    relu: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu?(conv2d(x, w, b, stride, padding, dilation, groups))``, channels_last, by the layer's
    own oneDNN primitive: made on the first call for ``w`` and ``x``'s shape, then kept while ``w``
    is the same tensor at the same version (an in-place update makes a new one).

    For inference on weights that do not require grad (frozen constants); with a weight that
    requires grad, an ``out`` other than channels_last, or a library built without oneDNN, it
    computes the same with ATen's ``conv2d``. No gradient flows through it.

    Args:
        x: float32 input ``(N, C_in, H, W)``; the primitive reads channels_last, and a copy in
            channels_last of an input in another layout (made on each call).
        w: weight ``(C_out, C_in / groups, kh, kw)``; b: bias ``(C_out,)`` or None.
        stride, padding, dilation, groups: as for ``torch.nn.functional.conv2d``.
        relu: apply ReLU to the output.
        out: where to write the result (the output's shape; channels_last takes the primitive).

    Raises:
        RuntimeError: arguments ``conv2d`` does not take, or an ``out`` of another shape.

    Example:
        >>> x = torch.randn(1, 8, 14, 14).contiguous(memory_format=torch.channels_last)
        >>> w, b = torch.randn(16, 8, 5, 5), torch.randn(16)
        >>> y = onednn_conv2d(x, w, b, padding=2, relu=True)
        >>> expected = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=2))
        >>> torch.allclose(y, expected, atol=1e-4), y.is_contiguous(memory_format=torch.channels_last)
        (True, True)
    """
    args = (
        x, w, b, pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation"),
        groups, relu,
    )  # fmt: skip
    if out is None:
        return torch.ops.deeprebirth.onednn_conv2d(*args)
    return torch.ops.deeprebirth.onednn_conv2d.out(*args, out=out)


def onednn_conv2d_add_(
    residual: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """``relu?(conv2d(x, w, b, ...) + residual)`` written over ``residual``, which it returns: the
    primitive of :func:`onednn_conv2d` with oneDNN's in-place sum (a channels_last ``residual``).

    Args:
        residual: the tensor to add to and overwrite, shaped like the convolution's output.
        x, w, b, stride, padding, dilation, groups, relu: as for :func:`onednn_conv2d`.

    Example:
        >>> x = torch.randn(1, 8, 7, 7).contiguous(memory_format=torch.channels_last)
        >>> w = torch.randn(8, 8, 1, 1)
        >>> r = torch.randn(1, 8, 7, 7).contiguous(memory_format=torch.channels_last)
        >>> expected = torch.nn.functional.conv2d(x, w) + r
        >>> y = onednn_conv2d_add_(r, x, w)
        >>> y is r and torch.allclose(y, expected, atol=1e-4)
        True
    """
    return torch.ops.deeprebirth.onednn_conv2d_add_(
        residual, x, w, b, pair(stride, "stride"), pair(padding, "padding"),
        pair(dilation, "dilation"), groups, relu,
    )  # fmt: skip
