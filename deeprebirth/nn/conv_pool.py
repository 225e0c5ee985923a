"""Convolution -> [ReLU] -> max/avg pooling computed by one fused operator: :class:`ConvPool2d`."""

from __future__ import annotations

import torch
from torch import nn

from deeprebirth.nn._compile import compiling_for_inductor
from deeprebirth.ops import _library, _reference
from deeprebirth.ops._args import pair
from deeprebirth.ops.conv_pool import IntOrPair

_library.load_extension()


class ConvPool2d(nn.Module):
    """A convolution, an optional ReLU and a max/avg pooling computed by one fused operator.

    Build it from existing layers with :meth:`from_modules` (exact), or directly.

    Shape:
        ``(N, in_channels, H, W) -> (N, out_channels, H_out, W_out)``.

    Example:
        >>> conv, pool = nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2)
        >>> fused = ConvPool2d.from_modules(conv, pool, relu=True)
        >>> x = torch.randn(2, 3, 16, 16)
        >>> torch.allclose(fused(x), pool(torch.relu(conv(x))), atol=1e-6)
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        pool: str = "max",
        pool_kernel: IntOrPair = 2,
        pool_stride: IntOrPair | None = None,
        pool_padding: IntOrPair = 0,
        ceil_mode: bool = False,
        relu: bool = True,
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f'expected pool to be "max" or "avg", but got {pool!r}')
        kernel = pair(kernel_size, "kernel_size")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.stride, self.padding = pair(stride, "stride"), pair(padding, "padding")
        self.dilation = pair(dilation, "dilation")
        self.pool, self.ceil_mode, self.relu = pool, ceil_mode, relu
        self.pool_kernel = pair(pool_kernel, "pool_kernel")
        self.pool_stride = pair(pool_kernel if pool_stride is None else pool_stride, "pool_stride")
        self.pool_padding = pair(pool_padding, "pool_padding")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *kernel))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        conv = nn.Conv2d(in_channels, out_channels, kernel, groups=groups, bias=bias)
        with torch.no_grad():  # nn.Conv2d's default initialisation
            self.weight.copy_(conv.weight)
            if self.bias is not None:
                self.bias.copy_(conv.bias)

    @classmethod
    def from_modules(
        cls, conv: nn.Conv2d, pool: nn.MaxPool2d | nn.AvgPool2d, relu: bool
    ) -> ConvPool2d:
        """Builds the exact fused equivalent of ``pool(relu?(conv(x)))``, copying conv's weights.

        Raises:
            ValueError: a layer setting the fused operator cannot express exactly (padding modes
                other than zeros, pooling dilation or indices, ``count_include_pad=False``,
                ``divisor_override``); the message names the setting.
        """
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"expected conv to be an nn.Conv2d, but got {type(conv).__name__}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"conv_pool needs explicit zero padding, but conv has padding={conv.padding!r}, "
                f"padding_mode={conv.padding_mode!r}"
            )
        if isinstance(pool, nn.MaxPool2d):
            if pair(pool.dilation, "pool.dilation") != [1, 1] or pool.return_indices:
                raise ValueError("conv_pool supports max pooling with dilation 1 and no indices")
            kind = "max"
        elif isinstance(pool, nn.AvgPool2d):
            if not pool.count_include_pad or pool.divisor_override is not None:
                raise ValueError(
                    "conv_pool's average pooling counts padded cells; got count_include_pad="
                    f"{pool.count_include_pad}, divisor_override={pool.divisor_override}"
                )
            kind = "avg"
        else:
            raise ValueError(
                f"expected pool to be nn.MaxPool2d or nn.AvgPool2d, but got {type(pool).__name__}"
            )
        fused = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=conv.bias is not None,
            pool=kind,
            pool_kernel=pool.kernel_size,
            pool_stride=pool.stride if pool.stride is not None else pool.kernel_size,
            pool_padding=pool.padding,
            ceil_mode=pool.ceil_mode,
            relu=relu,
        )
        fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(conv.weight)
            if conv.bias is not None:
                fused.bias.copy_(conv.bias)
        return fused

    def to_standard(self) -> nn.Sequential:
        """The standard layers it computes.

        Returns:
            an ``nn.Sequential`` of ``Conv2d`` (weights copied), ``ReLU`` when ``relu``, and
            ``MaxPool2d`` or ``AvgPool2d(count_include_pad=True)``.
        """
        weight = self.weight
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            tuple(weight.shape[2:]),
            stride=tuple(self.stride),
            padding=tuple(self.padding),
            dilation=tuple(self.dilation),
            groups=self.groups,
            bias=self.bias is not None,
        ).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        pool_args = (tuple(self.pool_kernel), tuple(self.pool_stride), tuple(self.pool_padding))
        if self.pool == "max":
            pool: nn.Module = nn.MaxPool2d(*pool_args, ceil_mode=self.ceil_mode)
        else:
            pool = nn.AvgPool2d(*pool_args, ceil_mode=self.ceil_mode, count_include_pad=True)
        layers: list[nn.Module] = [conv] + ([nn.ReLU()] if self.relu else []) + [pool]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._eager_forward(x)
        return torch.ops.deeprebirth.conv_pool(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.pool,
            self.pool_kernel,
            self.pool_stride,
            self.pool_padding,
            self.ceil_mode,
            self.relu,
        )

    @torch.jit.unused
    def _eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.compile gets the operator as standard ops, which inductor can fuse (_compile.py).
        op = _reference.conv_pool_reference
        if not compiling_for_inductor():
            op = torch.ops.deeprebirth.conv_pool
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        pooling = (self.pool, self.pool_kernel, self.pool_stride, self.pool_padding)
        return op(x, self.weight, self.bias, *geometry, *pooling, self.ceil_mode, self.relu)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.weight.shape[2:])}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}, relu={self.relu}, "
            f"pool={self.pool}, pool_kernel={self.pool_kernel}, pool_stride={self.pool_stride}, "
            f"pool_padding={self.pool_padding}, ceil_mode={self.ceil_mode}"
        )
