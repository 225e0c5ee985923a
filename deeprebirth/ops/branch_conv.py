"""Parallel convolutions over one input, concatenated: ``branch_conv``.

Its module form, :class:`~deeprebirth.nn.BranchConv2d`, lives in :mod:`deeprebirth.nn`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deeprebirth.ops import _library

_library.load_extension()


def branch_conv(
    x: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None] | None = None,
    paddings: Sequence[int] | None = None,
    stride: int = 1,
    relu: bool = False,
) -> torch.Tensor:
    """``cat([relu?(conv2d(x, w_i, b_i, stride, p_i)) for i], dim=1)`` in one operator.

    Args:
        x: input ``(N, C_in, H, W)``.
        weights: one ``(C_i, C_in, k_i, k_i')`` tensor per branch (groups=1, dilation 1).
        biases: one ``(C_i,)`` tensor or None per branch; None means no bias anywhere.
        paddings: symmetric padding per branch; defaults to ``k_i // 2`` ("same" for odd kernels).
        stride: shared by every branch.
        relu: apply ReLU to every branch.

    Returns:
        ``(N, sum C_i, H_out, W_out)``, channels_last when ``x`` is (else contiguous). Branch i
        owns the channels ``sum(C_j for j < i)`` up to ``sum(C_j for j <= i)``.

    Differentiable w.r.t. ``x``, every weight and every bias (``deeprebirth::branch_conv_backward``).

    Raises:
        RuntimeError: bad shapes or branches whose outputs differ in size; the message names the
            branch index.

    Example:
        >>> x = torch.randn(1, 192, 28, 28)
        >>> ws = [torch.randn(64, 192, 1, 1), torch.randn(96, 192, 1, 1), torch.randn(16, 192, 1, 1)]
        >>> branch_conv(x, ws, relu=True).shape
        torch.Size([1, 176, 28, 28])
    """
    weights = list(weights)
    biases = [None] * len(weights) if biases is None else list(biases)
    if paddings is None:
        paddings = [int(w.shape[-1]) // 2 if w.dim() == 4 else 0 for w in weights]
    return torch.ops.deeprebirth.branch_conv(x, weights, biases, list(paddings), stride, relu)


def __getattr__(name: str):
    # deeprebirth.ops.branch_conv.BranchConv2d from before deeprebirth.nn (pickles name it), read
    # lazily: deeprebirth.nn imports this package.
    if name == "BranchConv2d":
        from deeprebirth.nn.branch_conv import BranchConv2d

        return BranchConv2d
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
