"""ResNet blocks run on packed convolutions: :class:`PackedResidualBlock`,
:class:`PackedResidualStage`, and the standard form :class:`ResidualBlock`.

No ``from __future__ import annotations`` here: TorchScript reads the annotations.
"""

from collections.abc import Sequence

import torch
from torch import nn

from deeprebirth.nn.packed_conv import PackedConv2d, _conv_sharing_weights


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

    _fresh_shortcut: bool  # set for TorchScript by __prepare_scriptable__

    def __init__(self, convs: Sequence[nn.Conv2d], shortcut: nn.Conv2d | None = None) -> None:
        super().__init__()
        *body, last = convs
        self.body = nn.Sequential(*(PackedConv2d.from_conv(c, relu=True) for c in body))
        self.last = PackedConv2d.from_conv(last, relu=True)
        self.shortcut = nn.Identity() if shortcut is None else PackedConv2d.from_conv(shortcut)

    def forward(self, x: torch.Tensor, x_is_scratch: bool = False) -> torch.Tensor:
        """The block's output. ``x_is_scratch``: nothing reads ``x`` after this call, so the output
        may be written over it (set by :class:`PackedResidualStage` for the blocks it feeds)."""
        y = self.body(x)
        if not torch.jit.is_scripting():
            return self._add_shortcut(x, y, x_is_scratch)
        if self._fresh_shortcut or x_is_scratch:  # as _add_shortcut: accumulate into it
            return self.last.add_into_(y, self.shortcut(x))
        return self.last(y, self.shortcut(x))

    def __prepare_scriptable__(self) -> "PackedResidualBlock":
        # TorchScript cannot ask what type the shortcut is: torch.jit.script calls this first.
        self._fresh_shortcut = not isinstance(self.shortcut, nn.Identity)
        return self

    @torch.jit.unused
    def _add_shortcut(self, x: torch.Tensor, y: torch.Tensor, x_is_scratch: bool) -> torch.Tensor:
        # A downsample's output is fresh; an identity shortcut's is x itself. On the packed path
        # the last convolution then accumulates into that tensor instead of writing a new one.
        fresh_shortcut = not isinstance(self.shortcut, nn.Identity)
        if (fresh_shortcut or x_is_scratch) and self.last._packed_path_applies(y):
            return self.last.add_into_(y, self.shortcut(x))
        return self.last(y, self.shortcut(x))

    def to_standard(self) -> "ResidualBlock":
        """The standard layers it computes.

        Returns:
            a :class:`ResidualBlock` of ``nn.Conv2d`` and ``nn.ReLU`` layers sharing the weights.
        """
        body = [layer for packed in self.body for layer in _as_layers(packed.to_standard())]
        shortcut = self.shortcut
        if isinstance(shortcut, PackedConv2d):
            shortcut = shortcut.to_standard()
        return ResidualBlock(
            nn.Sequential(*body), _conv_sharing_weights(nn.Conv2d, self.last), shortcut
        )


class PackedResidualStage(nn.Sequential):
    """A run of :class:`PackedResidualBlock` (a ResNet stage such as torchvision's ``layer1``) in
    which every block after the first writes its output over its input.

    Those inputs are outputs of the stage's own blocks that nothing else reads, so no block past
    the first allocates an output, and each last convolution accumulates into the residual as it
    writes (see :meth:`PackedConv2d.add_into_`). A block with forward hooks (on it or one of its
    layers, which may keep the output) turns the reuse off for its successor; the stage's input
    is never written. Exact, as its blocks are; ``to_standard()`` gives the plain ``nn.Sequential``
    of ``ResidualBlock``.

    Example:
        >>> stage = PackedResidualStage(
        ...     *(PackedResidualBlock([nn.Conv2d(8, 8, 3, padding=1)] * 2) for _ in range(2))
        ... )
        >>> stage(torch.randn(1, 8, 6, 6)).shape
        torch.Size([1, 8, 6, 6])
    """

    _script_private_outputs: list[bool]  # set for TorchScript by __prepare_scriptable__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_is_scratch = False
        for i, block in enumerate(self):  # a loop over the blocks: TorchScript unrolls it
            x = block(x, x_is_scratch)
            if not torch.jit.is_scripting():
                x_is_scratch = self._output_is_private(block)
            else:
                x_is_scratch = self._script_private_outputs[i]
        return x

    def __prepare_scriptable__(self) -> "PackedResidualStage":
        # TorchScript compiles the hooks registered when it scripts the stage, and no later ones:
        # which block outputs stay private is known then (torch.jit.script calls this first).
        self._script_private_outputs = [self._output_is_private(block) for block in self]
        return self

    @torch.jit.unused
    def _output_is_private(self, block: nn.Module) -> bool:
        if nn.modules.module._global_forward_hooks:
            return False
        return not any(module._forward_hooks for module in block.modules())

    def to_standard(self) -> nn.Sequential:
        """The standard layers it computes.

        Returns:
            an ``nn.Sequential`` of the blocks' :class:`ResidualBlock` forms (sharing the weights).
        """
        return nn.Sequential(*(block.to_standard() for block in self))


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
