"""Parallel convolutions over one input, concatenated: :class:`BranchConv2d` (one fused
operator) and its standard form :class:`ConcatBranches`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from deeprebirth.nn._compile import compiling_for_inductor
from deeprebirth.ops import _library, _reference
from deeprebirth.ops._args import pair

_library.load_extension()


class ConcatBranches(nn.Module):
    """Runs each branch on the same input and concatenates the outputs along channels
    (``relu``: each branch output through ReLU first).

    The branch-slimmed form of torchvision's GoogLeNet ``Inception`` (two branches left), and the
    standard form of :class:`BranchConv2d` (its convolutions, ``relu`` set).

    Shape:
        ``(N, C, H, W) -> (N, sum of branch widths, H, W)``.

    Example:
        >>> m = ConcatBranches([nn.Conv2d(4, 3, 1), nn.Conv2d(4, 5, 3, padding=1)], relu=True)
        >>> m(torch.zeros(1, 4, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(self, branches: Sequence[nn.Module], relu: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for branch in self.branches:  # a loop, not a comprehension: TorchScript compiles it
            y = branch(x)
            outputs.append(torch.relu(y) if self.relu else y)
        return torch.cat(outputs, 1)


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

    def as_conv(self) -> nn.Conv2d | None:
        """One ``nn.Conv2d`` computing every branch, when they all share one window (kernel size
        and padding; the stride is always shared): its weights and biases are the branches'
        concatenated along output channels, so its output is this module's before the ReLU.
        ``None`` when the windows differ (a 1x1 branch beside a 3x3 one).

        ``pack_conv`` packs such a module as one convolution: oneDNN then keeps its weights
        packed, where ``branch_conv`` concatenates or reorders them on every call.

        Example:
            >>> merged = BranchConv2d(8, [4, 2], [1, 1])
            >>> merged.as_conv()
            Conv2d(8, 6, kernel_size=(1, 1), stride=(1, 1))
            >>> BranchConv2d(8, [4, 2], [1, 3]).as_conv() is None
            True
        """
        kernel = self._shared_kernel()
        if kernel is None:
            return None
        conv = nn.Conv2d(
            self.in_channels,
            sum(self.out_channels),
            kernel,
            stride=self.stride,
            padding=self.paddings[0],
            bias=self.has_bias,
        ).to(device=self.weights[0].device, dtype=self.weights[0].dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.cat(list(self.weights)))
            if self.has_bias:
                conv.bias.copy_(torch.cat(list(self.biases)))
        return conv

    def _shared_kernel(self) -> tuple[int, ...] | None:
        """The kernel size every branch has, when they also share one padding; else None."""
        kernels = {tuple(w.shape[2:]) for w in self.weights}
        return kernels.pop() if len(kernels) == 1 and len(set(self.paddings)) == 1 else None

    def to_standard(self) -> ConcatBranches:
        """The standard layers it computes.

        Returns:
            a :class:`ConcatBranches` of its :attr:`branches` (``nn.Conv2d``, weights copied).
        """
        return ConcatBranches(self.branches, self.relu)

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
        if not torch.jit.is_scripting():
            if compiling_for_inductor():  # standard ops, which inductor can fuse (_compile.py)
                return self._standard_forward(x, weights, biases)
        return torch.ops.deeprebirth.branch_conv(
            x, weights, biases, self.paddings, self.stride, self.relu
        )

    @torch.jit.unused
    def _standard_forward(
        self, x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor | None]
    ) -> torch.Tensor:
        if self._shared_kernel() is not None:
            # One window: one convolution of the concatenated weights (constants that inductor's
            # freezing folds), so the output is no cat that later narrow views copy from.
            bias = torch.cat(biases) if self.has_bias else None
            y = F.conv2d(x, torch.cat(weights), bias, self.stride, self.paddings[0])
            return F.relu(y) if self.relu else y
        return _reference.branch_conv_reference(
            x, weights, biases, self.paddings, self.stride, self.relu
        )

    def extra_repr(self) -> str:
        kernels = [tuple(w.shape[2:]) for w in self.weights]
        return (
            f"{self.in_channels}, {self.out_channels}, kernels={kernels}, paddings={self.paddings}, "
            f"stride={self.stride}, bias={self.has_bias}, relu={self.relu}"
        )
