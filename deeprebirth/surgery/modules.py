"""Modules that rules put into models.

No ``from __future__ import annotations`` here: TorchScript reads PackedConv2d's annotations.
"""

from collections.abc import Sequence

import torch
from torch import nn

from deeprebirth.surgery.accounting import conv2d_macs


class ConcatBranches(nn.Module):
    """Runs each branch on the same input and concatenates the outputs along channels
    (``relu``: each branch output through ReLU first).

    The branch-slimmed form of torchvision's GoogLeNet ``Inception`` (two branches left), and the
    portable form of :class:`~deeprebirth.ops.BranchConv2d` (its convolutions, ``relu`` set).

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


class PackedConv2d(nn.Conv2d):
    """``Conv2d`` (optionally with its ReLU) whose CPU inference runs oneDNN on weights packed once.

    A plain CPU convolution hands oneDNN the weights in PyTorch's layout, and oneDNN reorders them
    into its blocked layout on every call: at batch 1 that copy costs about as much as the
    arithmetic of a late ResNet layer. This module keeps the packed copy (one per input shape, at
    most :attr:`max_packed_shapes` of them, rebuilt when the weight changes) and calls
    ``torch.ops.mkldnn._convolution_pointwise``, which also applies the fused ReLU (and a residual
    add, ``forward(x, residual)``) in the same pass. The result equals ``relu?(conv2d(x))``
    up to float32 rounding.

    The packed path runs only where it pays and is safe: calls of at least
    :attr:`min_packed_macs` multiply-accumulates, eval mode, no autograd needed, a plain float32
    CPU tensor, oneDNN available, and not while scripting, tracing, exporting or compiling. Every
    other call (training, gradients, other dtypes/devices, TorchScript) is the ordinary
    ``Conv2d`` forward followed by ReLU when ``relu``. ``train()`` drops the packed copies.
    Outputs of the packed path are channels_last (oneDNN's fast layout) whatever the input's
    layout; values and shapes are those of ``Conv2d``.

    Args:
        *args, **kwargs: as for ``nn.Conv2d`` (``padding_mode="zeros"``, numeric padding).
        relu: apply ReLU to the output (fused into the convolution on the packed path).

    Shape:
        as ``nn.Conv2d``.

    Example:
        >>> conv = PackedConv2d(3, 8, 3, padding=1, relu=True).eval()
        >>> x = torch.randn(1, 3, 16, 16)
        >>> with torch.no_grad():
        ...     torch.allclose(conv(x), torch.relu(conv._conv_forward(x, conv.weight, conv.bias)),
        ...                    atol=1e-5)
        True
    """

    __jit_ignored_attributes__ = ["packed_weights"]
    #: Calls with fewer multiply-accumulates run the plain convolution: oneDNN's fixed cost per
    #: call (tens of microseconds here) exceeds what packing saves on tiny layers. A
    #: Fashion-MNIST-size GoogLeNet (all layers < 1M MACs) ran 1.7x slower packed, ResNet-50's
    #: layers (>= 12M MACs at 224x224) 1.4x faster. Set it on an instance or the class.
    min_packed_macs: int = 1 << 22
    #: Packed copies kept per layer, one per input shape (the most recently packed ones).
    max_packed_shapes: int = 2

    def __init__(self, *args, relu: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        problem = packing_problem(self)
        if problem:
            raise ValueError(problem)
        self.relu = relu
        self.packed_weights: dict = {}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: bool = False) -> "PackedConv2d":
        """A PackedConv2d sharing ``conv``'s weight and bias (exact; ``relu`` fuses a ReLU).

        Raises:
            ValueError: ``conv`` uses a padding mode other than zeros or string padding.
        """
        return _conv_sharing_weights(cls, conv, relu=relu)

    def to_standard(self) -> nn.Module:
        """The plain ``Conv2d`` (``-> ReLU`` when fused) it computes, sharing its weights."""
        conv = _conv_sharing_weights(nn.Conv2d, self)
        return nn.Sequential(conv, nn.ReLU()) if self.relu else conv

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")

    def train(self, mode: bool = True) -> "PackedConv2d":
        if mode:  # the weights are about to change: free the packed copies
            self.packed_weights = {}
        return super().train(mode)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["packed_weights"] = {}  # oneDNN's opaque tensors can be neither copied nor pickled
        return state

    def macs(self, input_shape: Sequence[int]) -> int:
        """Multiply-accumulates of one call on an input of ``input_shape`` (N, C, H, W)."""
        return conv2d_macs(self, tuple(input_shape))

    @torch.jit.unused
    def _packed_path_applies(self, x: torch.Tensor) -> bool:
        return (
            not self.training
            and type(x) is torch.Tensor
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 4
            and x.numel() > 0
            and self.weight.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and self.macs(x.shape) >= self.min_packed_macs
        )

    @torch.jit.unused
    def _packed_forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        key = (tuple(x.shape), self.weight.data_ptr(), self.weight._version)
        weight = self.packed_weights.get(key)
        if weight is None:
            # Same weight only, and at most max_packed_shapes input shapes (the newest): each packed
            # copy is as large as the weight, and a server sees many batch sizes.
            kept = [(k, v) for k, v in self.packed_weights.items() if k[1:] == key[1:]]
            self.packed_weights = dict(kept[len(kept) - self.max_packed_shapes + 1 :])
            weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.detach().to_mkldnn(),
                list(self.padding),
                list(self.stride),
                list(self.dilation),
                self.groups,
                list(x.shape),
            )
            self.packed_weights[key] = weight
        bias = None if self.bias is None else self.bias.detach()
        geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        if residual is not None and self.relu:  # relu(conv(x) + residual) in one oneDNN call
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, weight, bias, *geometry, "add", 1.0, "relu", [], ""
            )
        attr = "relu" if self.relu and residual is None else "none"
        y = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry, attr, [], "")
        return y if residual is None else y + residual

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``relu?(conv(x) [+ residual])``: the residual is added before the ReLU."""
        if not torch.jit.is_scripting() and self._packed_path_applies(x):
            return self._packed_forward(x, residual)
        y = self._conv_forward(x, self.weight, self.bias)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self.relu else y


def packing_problem(conv: nn.Conv2d) -> str:
    """'' when ``conv``'s settings fit :class:`PackedConv2d`, else why not."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return (
            f"padding_mode={conv.padding_mode!r}, padding={conv.padding!r}: PackedConv2d needs "
            "padding_mode='zeros' and numeric padding"
        )
    return ""


def _conv_sharing_weights(cls: type[nn.Conv2d], conv: nn.Conv2d, **kwargs) -> nn.Conv2d:
    """A ``cls`` with ``conv``'s settings, weight and bias (the same Parameters) and mode."""
    new = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=False,
        padding_mode=conv.padding_mode,
        device="meta",
        **kwargs,
    )
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


class PackedResidualBlock(nn.Module):
    """A ResNet block after BatchNorm folding, every ReLU and the residual add fused into its
    packed convolutions: ``relu(last(body(x)) + shortcut(x))`` where ``body`` ends in a ReLU.

    Built by the ``pack_conv`` rule from torchvision's ``BasicBlock`` / ``Bottleneck`` (whose one
    shared ReLU module a per-layer rewrite cannot remove). Exact up to float32 rounding.

    Args:
        convs: the block's convolutions in order (conv1, conv2[, conv3]), BatchNorms folded in.
        shortcut: the 1x1 downsample convolution, or None for the identity shortcut.

    Example:
        >>> block = PackedResidualBlock([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])
        >>> block(torch.randn(1, 8, 6, 6)).shape
        torch.Size([1, 8, 6, 6])
    """

    def __init__(self, convs: Sequence[nn.Conv2d], shortcut: nn.Conv2d | None = None) -> None:
        super().__init__()
        *body, last = convs
        self.body = nn.Sequential(*(PackedConv2d.from_conv(c, relu=True) for c in body))
        self.last = PackedConv2d.from_conv(last, relu=True)
        self.shortcut = nn.Identity() if shortcut is None else PackedConv2d.from_conv(shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.body(x), self.shortcut(x))

    def to_standard(self) -> "ResidualBlock":
        """The same block of plain layers (sharing the weights)."""
        body = [layer for packed in self.body for layer in _as_layers(packed.to_standard())]
        shortcut = self.shortcut
        if isinstance(shortcut, PackedConv2d):
            shortcut = shortcut.to_standard()
        return ResidualBlock(
            nn.Sequential(*body), _conv_sharing_weights(nn.Conv2d, self.last), shortcut
        )


class ResidualBlock(nn.Module):
    """``relu(last(body(x)) + shortcut(x))`` with standard layers: the portable form of
    :class:`PackedResidualBlock`.

    Example:
        >>> block = ResidualBlock(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), nn.Conv2d(4, 4, 1))
        >>> block(torch.randn(1, 4, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
    """

    def __init__(self, body: nn.Module, last: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body, self.last = body, last
        self.shortcut = nn.Identity() if shortcut is None else shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.last(self.body(x)) + self.shortcut(x))


def _as_layers(module: nn.Module) -> list[nn.Module]:
    return list(module) if isinstance(module, nn.Sequential) else [module]
