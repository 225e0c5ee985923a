"""Direct convolution for small layers: ``direct_conv_pack``, ``direct_conv``, ``small_conv2d``,
``small_conv2d_add_`` and ``small_conv2d_cat``.

On a Fashion-MNIST-size network every convolution does well under a million multiply-accumulates
and a convolution library's fixed cost per call (im2col, GEMM setup, oneDNN's weight reorder)
exceeds the arithmetic. ``direct_conv`` computes such layers straight from the input with the
weight packed once (``direct_conv_pack``), bias and ReLU fused. ``small_conv2d`` is the call a
module makes: the direct kernel where it pays, ``conv2d`` otherwise (PackedConv2d uses it, eager
and in TorchScript); ``small_conv2d_cat`` does the same for the convolutions whose outputs are
concatenated (an Inception module's branches), each written into its channels of one output.
``scripts/bench_direct_conv.py`` compares them per layer; :func:`direct_conv_isa` says which
instruction set the kernel uses on this CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deeprebirth.ops import _library
from deeprebirth.ops._args import pair

_library.load_extension()


def direct_conv_isa() -> str:
    """The instruction set of deeprebirth's CPU kernels in this process (the direct kernel and
    every other per-ISA path): ``"avx512"``, ``"avx2"`` or ``"sse2"`` on x86-64 (the widest the
    CPU has; the environment variable ``DEEPREBIRTH_CPU_ISA`` picks a narrower one, read once per
    process), ``"portable"`` elsewhere.

    Example:
        >>> direct_conv_isa() in ("avx512", "avx2", "sse2", "portable")
        True
    """
    return torch.ops.deeprebirth.direct_conv_isa()


def direct_conv_pack(w: torch.Tensor) -> torch.Tensor:
    """``w`` ``(C_out, C_in, kh, kw)`` in :func:`direct_conv`'s layout
    ``(ceil(C_out / 16), C_in, kh, kw, 16)`` (channel ``c`` at ``[c // 16, ..., c % 16]``, the
    lanes past ``C_out`` zero). Pack once per weight; ``torch.jit.freeze`` folds a pack of a frozen
    weight into a constant.

    Example:
        >>> direct_conv_pack(torch.randn(20, 3, 3, 3)).shape
        torch.Size([2, 3, 3, 3, 16])
    """
    return torch.ops.deeprebirth.direct_conv_pack(w)


def direct_conv(
    x: torch.Tensor,
    packed_w: torch.Tensor,
    b: torch.Tensor | None,
    out_channels: int,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    relu: bool = False,
) -> torch.Tensor:
    """``relu?(conv2d(x, w, b, stride, padding))`` computed directly, ``packed_w`` being
    :func:`direct_conv_pack` of ``w``.

    Float32 on the CPU, groups 1, dilation 1, zero padding; inference only.

    Args:
        x: input ``(N, C_in, H, W)``, any layout.
        packed_w: ``direct_conv_pack(w)`` for ``w`` of shape ``(out_channels, C_in, kh, kw)``.
        b: ``(out_channels,)`` or None.
        out_channels: ``w.size(0)`` (the packed weight rounds it up to a multiple of 16).
        stride, padding: as for ``conv2d`` (an int or a pair).
        relu: apply ReLU to the output.

    Returns:
        ``(N, out_channels, H_out, W_out)``, contiguous.

    Raises:
        RuntimeError: bad shapes, dtypes or devices (the message names the argument), or an input
            that requires grad while grad mode is on (use ``conv2d`` to train).

    Example:
        >>> x, w = torch.randn(1, 3, 8, 8), torch.randn(5, 3, 3, 3)
        >>> y = direct_conv(x, direct_conv_pack(w), None, 5, padding=1)
        >>> torch.allclose(y, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-5)
        True
    """
    return torch.ops.deeprebirth.direct_conv(
        x, packed_w, b, out_channels, pair(stride, "stride"), pair(padding, "padding"), relu
    )


def small_conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    packed_w: torch.Tensor,
    b: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    relu: bool = False,
    max_macs: int = 1 << 22,
    max_1x1_pixels: int = 64,
) -> torch.Tensor:
    """``relu?(conv2d(x, w, b, stride, padding, dilation, groups))``: on frozen weights by the
    fastest kernel for the input shape, else by :func:`direct_conv` on ``packed_w``
    (``direct_conv_pack(w)``) where that pays, by ``conv2d`` otherwise.

    The direct kernel may run for float32 CPU inputs, groups 1, dilation 1, no gradient needed,
    fewer than ``max_macs`` multiply-accumulates, and, for 1x1 kernels, at most
    ``max_1x1_pixels`` output pixels per image (a GEMM over the pixels wins above that). Float32
    CPU inference with a weight that does not require grad (TorchScript's frozen constants; not an
    inference tensor) takes the packed path: oneDNN on a packed copy of ``w`` kept across calls,
    one per input shape, remade when ``w`` is updated in place (its version counter) and dropped
    when ``w`` is freed. On the first call of an input shape it times oneDNN against
    :func:`winograd_conv2d` on :func:`winograd_pack` copies of ``w`` for both tiles (3x3
    stride-1 layers; ``DEEPREBIRTH_PACKED_WINOGRAD=0`` never, ``=1`` always F(2x2), ``=4`` always
    F(4x4); the fastest is kept) and the direct kernel (where it may run), each reading its weight
    copy from memory as in a model whose weights outgrow the
    caches (``DEEPREBIRTH_PACKED_TIMING=warm`` times them on cached weights), and keeps the
    fastest; its output is channels_last whichever wins. Every other call is
    ``conv2d`` (differentiable as usual). One operator call either way, so a TorchScript graph
    holds no branches of its own for the choice.

    Example:
        >>> x, w = torch.randn(1, 3, 8, 8), torch.randn(5, 3, 3, 3)
        >>> y = small_conv2d(x, w, direct_conv_pack(w), padding=1, relu=True)
        >>> torch.allclose(y, torch.relu(torch.nn.functional.conv2d(x, w, padding=1)), atol=1e-5)
        True
    """
    return torch.ops.deeprebirth.small_conv2d(
        x, w, packed_w, b, pair(stride, "stride"), pair(padding, "padding"),
        pair(dilation, "dilation"),
        groups, relu, max_macs, max_1x1_pixels,
    )  # fmt: skip


def small_conv2d_add_(
    residual: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    packed_w: torch.Tensor,
    b: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    relu: bool = False,
    max_macs: int = 1 << 22,
    max_1x1_pixels: int = 64,
) -> torch.Tensor:
    """``relu?(conv2d(x, w, b, ...) + residual)`` written over ``residual``, which it returns: a
    residual block's last convolution added to its shortcut's output.

    Where :func:`small_conv2d` would run oneDNN on a packed copy of a weight that does not require
    grad (TorchScript's frozen constants) and no gradient is needed, oneDNN adds the convolution
    into ``residual`` as it writes it (its "sum" post-op, for a channels_last ``residual``):
    neither a second output nor a separate add and ReLU pass. Elsewhere :func:`small_conv2d`,
    ``residual.add_`` and ``relu_``, which autograd sees.

    Args:
        residual: the tensor to add to and overwrite, shaped like the convolution's output.
        x, w, packed_w, b, stride, padding, dilation, groups, relu, max_macs, max_1x1_pixels: as
            for :func:`small_conv2d`.

    Example:
        >>> x, w, r = torch.randn(1, 3, 8, 8), torch.randn(5, 3, 3, 3), torch.randn(1, 5, 8, 8)
        >>> expected = torch.relu(torch.nn.functional.conv2d(x, w, padding=1) + r)
        >>> y = small_conv2d_add_(r, x, w, direct_conv_pack(w), padding=1, relu=True)
        >>> y is r and torch.allclose(y, expected, atol=1e-5)
        True
    """
    return torch.ops.deeprebirth.small_conv2d_add_(
        residual, x, w, packed_w, b, pair(stride, "stride"), pair(padding, "padding"),
        pair(dilation, "dilation"),
        groups, relu, max_macs, max_1x1_pixels,
    )  # fmt: skip


def small_conv2d_cat(
    xs: Sequence[torch.Tensor],
    ws: Sequence[torch.Tensor],
    packed_ws: Sequence[torch.Tensor],
    bs: Sequence[torch.Tensor | None],
    strides: Sequence[int | tuple[int, int]],
    paddings: Sequence[int | tuple[int, int]],
    relu: bool = False,
    max_macs: int = 1 << 22,
    max_1x1_pixels: int = 64,
) -> torch.Tensor:
    """``cat([relu?(conv2d(xs[i], ws[i], bs[i], strides[i], paddings[i]))], 1)``: every branch by
    the direct kernel straight into its channels of the output where :func:`small_conv2d` would
    take the direct kernel for each, ``torch.cat`` of :func:`small_conv2d` calls otherwise.

    Args:
        xs: one input per branch (they may differ; the outputs must share batch and spatial size).
        ws, packed_ws, bs: each branch's weight, ``direct_conv_pack(weight)`` and bias (or None).
        strides, paddings: per branch, an int or a pair.
        relu, max_macs, max_1x1_pixels: as for :func:`small_conv2d`.

    Raises:
        RuntimeError: mismatched list lengths or outputs; the message names the branch.

    Example:
        >>> xs = [torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8)]
        >>> ws = [torch.randn(6, 4, 3, 3), torch.randn(3, 2, 5, 5)]
        >>> y = small_conv2d_cat(xs, ws, [direct_conv_pack(w) for w in ws], [None, None],
        ...                      [1, 1], [1, 2], relu=True)
        >>> y.shape
        torch.Size([1, 9, 8, 8])
    """
    flat_strides = [v for s in strides for v in pair(s, "strides")]
    flat_paddings = [v for p in paddings for v in pair(p, "paddings")]
    return torch.ops.deeprebirth.small_conv2d_cat(
        list(xs), list(ws), list(packed_ws), list(bs), flat_strides, flat_paddings, relu,
        max_macs, max_1x1_pixels,
    )  # fmt: skip
