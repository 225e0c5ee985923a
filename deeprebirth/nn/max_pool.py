""":class:`InferenceMaxPool2d`: ``nn.MaxPool2d`` on ``deeprebirth::max_pool2d``, which pools
without writing the indices ATen's CPU kernel computes for its backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import deeprebirth.ops  # noqa: F401  (loads torch.ops.deeprebirth.max_pool2d)
from deeprebirth.nn._compile import compiling_for_inductor
from deeprebirth.ops._args import pair


class InferenceMaxPool2d(nn.MaxPool2d):
    """An ``nn.MaxPool2d`` (dilation 1, no indices returned) whose CPU calls run
    :func:`deeprebirth.ops.max_pool2d`: the same values (NaN propagated) and memory format, and
    gradients through ATen's pooling where one is needed. ``flatten_for_inference`` puts it in
    place of such pools; :meth:`to_standard` gives the ``nn.MaxPool2d`` back.

    Example:
        >>> pool = InferenceMaxPool2d.from_pool(nn.MaxPool2d(3, 2, ceil_mode=True))
        >>> x = torch.randn(1, 8, 13, 13).contiguous(memory_format=torch.channels_last)
        >>> torch.equal(pool(x), pool.to_standard()(x))
        True
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.computes(self):
            raise ValueError(
                "InferenceMaxPool2d takes max pools with dilation 1 that return no indices, but "
                f"got dilation={self.dilation}, return_indices={self.return_indices}"
            )
        # the operator's int[2] arguments, resolved once (stride None means kernel_size)
        self.kernel_pair = pair(self.kernel_size, "kernel_size")
        stride = self.kernel_size if self.stride is None else self.stride
        self.stride_pair = pair(stride, "stride")
        self.padding_pair = pair(self.padding, "padding")

    @staticmethod
    def computes(pool: nn.MaxPool2d) -> bool:
        """Whether ``pool``'s arguments are ones this module takes: dilation 1, no indices."""
        return not pool.return_indices and pair(pool.dilation, "dilation") == [1, 1]

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d) -> InferenceMaxPool2d:
        """The inference form of ``pool``; raises ValueError for a dilated pool or one that
        returns indices."""
        return cls(
            pool.kernel_size,
            pool.stride,
            pool.padding,
            pool.dilation,
            pool.return_indices,
            pool.ceil_mode,
        )

    def to_standard(self) -> nn.Module:
        """The ``nn.MaxPool2d`` this module computes."""
        return nn.MaxPool2d(self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._eager_forward(x)
        if x.is_cpu:
            return self._operator_forward(x)
        return self._standard_forward(x)

    @torch.jit.unused
    def _eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.compile gets ATen's pooling, which inductor can fuse (_compile.py)
        if x.is_cpu and not compiling_for_inductor():
            return self._operator_forward(x)
        return self._standard_forward(x)

    def _operator_forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.deeprebirth.max_pool2d(
            x, self.kernel_pair, self.stride_pair, self.padding_pair, self.ceil_mode
        )

    def _standard_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, 1, self.ceil_mode)
