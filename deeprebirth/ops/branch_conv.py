"""Parallel convolutions over one input, concatenated: ``branch_conv`` and ``BranchConv2d``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deeprebirth.ops import _library
from deeprebirth.ops._args import pair

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


class BranchConv2d(nn.Module):
    """Several convolutions over the same input whose outputs are concatenated along channels.

    Build it from existing parallel convolutions with :meth:`from_convs` (exact) and read them back
    with :attr:`branches`.

    Shape:
        ``(N, in_channels, H, W) -> (N, sum(out_channels), H_out, W_out)``.

    Example:
        >>> convs = [nn.Conv2d(16, 8, 1), nn.Conv2d(16, 4, 3, padding=1)]
        >>> merged = BranchConv2d.from_convs(convs, relu=False)
        >>> x = torch.randn(2, 16, 9, 9)
        >>> torch.allclose(merged(x), torch.cat([c(x) for c in convs], 1), atol=1e-5)
        True
    """

    __jit_unused_properties__ = ["branches"]  # Python-side helper, not part of the graph

    def __init__(
        self,
        in_channels: int,
        out_channels: Sequence[int],
        kernel_sizes: Sequence[int | tuple[int, int]],
        paddings: Sequence[int] | None = None,
        stride: int = 1,
        bias: bool = True,
        relu: bool = False,
    ) -> None:
        super().__init__()
        if len(out_channels) != len(kernel_sizes) or not out_channels:
            raise ValueError(
                "expected out_channels and kernel_sizes to be non-empty and of equal length, but "
                f"got {list(out_channels)} and {list(kernel_sizes)}"
            )
        self.in_channels, self.stride, self.relu = in_channels, stride, relu
        self.out_channels = list(out_channels)
        kernels = [pair(k, "kernel_sizes") for k in kernel_sizes]
        self.paddings = [k[0] // 2 for k in kernels] if paddings is None else list(paddings)
        convs = [
            nn.Conv2d(in_channels, c, k, bias=bias)
            for c, k in zip(out_channels, kernels, strict=False)
        ]
        self.weights = nn.ParameterList([nn.Parameter(c.weight.detach().clone()) for c in convs])
        # Always a ParameterList (empty without bias) so that forward compiles with TorchScript.
        self.has_bias: bool = bias
        self.biases = nn.ParameterList(
            [nn.Parameter(c.bias.detach().clone()) for c in convs] if bias else []
        )

    @classmethod
    def from_convs(cls, convs: Sequence[nn.Conv2d], relu: bool) -> BranchConv2d:
        """Builds the exact merged equivalent of ``cat([relu?(conv(x)) for conv in convs], 1)``.

        Every convolution must read the same input the same way: equal ``in_channels``, equal
        square stride, dilation 1, groups 1, symmetric zero padding, and the same output size for
        every input size (equal ``kernel_size - 2 * padding`` per dimension, e.g. 1x1/p0, 3x3/p1,
        5x5/p2), and all or none with a bias.

        Args:
            convs: the parallel convolutions, in output-channel order.
            relu: apply ReLU to every branch (as the Inception branches' own ReLUs do).

        Raises:
            ValueError: the convolutions do not share one input geometry; the message names the
                branch index and every violated condition.

        Example:
            >>> merged = BranchConv2d.from_convs([nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 3, padding=1)],
            ...                                  relu=True)
            >>> [c.kernel_size for c in merged.branches]
            [(1, 1), (3, 3)]
        """
        convs = list(convs)
        if not convs:
            raise ValueError("expected at least one convolution, but got none")
        first = convs[0]
        paddings = []
        for i, conv in enumerate(convs):
            if not isinstance(conv, nn.Conv2d):
                raise ValueError(f"branch {i}: expected nn.Conv2d, but got {type(conv).__name__}")
            problems = []
            if conv.in_channels != first.in_channels:
                problems.append(f"in_channels {conv.in_channels} != {first.in_channels}")
            if conv.stride[0] != conv.stride[1] or conv.stride != first.stride:
                problems.append(f"stride {conv.stride} != {first.stride} or not square")
            if conv.dilation != (1, 1) or conv.groups != 1:
                problems.append(f"dilation {conv.dilation} / groups {conv.groups} unsupported")
            if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
                problems.append(f"padding {conv.padding!r} / mode {conv.padding_mode!r}")
            elif conv.padding[0] != conv.padding[1]:
                problems.append(f"asymmetric padding {conv.padding}")
            elif conv.kernel_size[0] - 2 * conv.padding[0] != (
                first.kernel_size[0] - 2 * first.padding[0]
            ) or conv.kernel_size[1] - 2 * conv.padding[1] != (
                first.kernel_size[1] - 2 * first.padding[1]
            ):
                problems.append("output size differs from branch 0")
            if (conv.bias is None) != (first.bias is None):
                problems.append("bias presence differs from branch 0")
            if problems:
                raise ValueError(f"branch {i} cannot be merged: " + "; ".join(problems))
            paddings.append(conv.padding[0])
        merged = cls(
            first.in_channels,
            [c.out_channels for c in convs],
            [tuple(c.kernel_size) for c in convs],
            paddings,
            first.stride[0],
            bias=first.bias is not None,
            relu=relu,
        ).to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            for i, conv in enumerate(convs):
                merged.weights[i].copy_(conv.weight)
                if conv.bias is not None:
                    merged.biases[i].copy_(conv.bias)
        return merged

    @property
    def branches(self) -> list[nn.Conv2d]:
        """The branches as independent ``nn.Conv2d`` modules (copies of the weights)."""
        convs = []
        for i, w in enumerate(self.weights):
            conv = nn.Conv2d(
                self.in_channels,
                w.shape[0],
                tuple(w.shape[2:]),
                stride=self.stride,
                padding=self.paddings[i],
                bias=self.has_bias,
            ).to(device=w.device, dtype=w.dtype)
            with torch.no_grad():
                conv.weight.copy_(w)
                if self.has_bias:
                    conv.bias.copy_(self.biases[i])
            convs.append(conv)
        return convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, H, W) -> (N, sum(out_channels), H_out, W_out)``."""
        # Loops rather than list(ParameterList): TorchScript compiles these.
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

    def extra_repr(self) -> str:
        kernels = [tuple(w.shape[2:]) for w in self.weights]
        return (
            f"{self.in_channels}, {self.out_channels}, kernels={kernels}, paddings={self.paddings}, "
            f"stride={self.stride}, bias={self.has_bias}, relu={self.relu}"
        )
