"""``nn.LocalResponseNorm`` as every runtime runs it: :class:`LocalResponseNorm2d`.

PyTorch computes LRN with an ``avg_pool3d`` over a 5-D view, which ExecuTorch has no kernel
for; :func:`local_response_norm_2d` is the same sum over channels as an ``avg_pool2d``, which
XNNPACK takes whole. :func:`~deeprebirth.export.make_portable` puts it in place of every
``nn.LocalResponseNorm``; it is itself the portable form (no ``to_standard``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def local_response_norm_2d(
    x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> torch.Tensor:
    """``F.local_response_norm`` of an ``(N, C, H, W)`` batch through ``avg_pool2d``.

    ``x / (k + alpha * mean of x**2 over the size channels around each, zero-padded) ** beta``:
    the squares are viewed as one ``(C, H * W)`` plane per image, zero-padded and averaged over
    a ``(size, 1)`` window, where PyTorch pads and pools a 5-D view with ``avg_pool3d``. Same
    window, padding and divisor. The pooling pads nothing itself (XNNPACK takes no
    ``count_include_pad``), and ``beta`` 0.5 / 0.75 / 1 are square roots and products (XNNPACK
    takes ``pow`` only for the exponent 2), so every runtime runs the whole rewrite.

    Raises:
        ValueError: ``x`` is not 4-D.

    Example:
        >>> x = torch.randn(2, 7, 5, 5)
        >>> ref = F.local_response_norm(x, 5, 1e-4, 0.75, 1.0)
        >>> torch.allclose(local_response_norm_2d(x, 5), ref, rtol=1e-6, atol=0)
        True
    """
    if x.dim() != 4:
        raise ValueError(f"expected x of shape (N, C, H, W), but got {tuple(x.shape)}")
    channels, height, width = x.shape[1:]
    # -1 for the batch: the reshape needs no runtime shape (no Shape node in ONNX).
    squares = (x * x).reshape(-1, 1, channels, height * width)
    padded = F.pad(squares, (0, 0, size // 2, (size - 1) // 2))
    mean = F.avg_pool2d(padded, (size, 1), stride=1, count_include_pad=False)
    base = mean.reshape(-1, channels, height, width).mul(alpha).add(k)
    if beta == 1.0:
        return x / base
    if beta == 0.5:
        return x / base.sqrt()
    if beta == 0.75:
        # base**0.75 as sqrt(base * sqrt(base)): a product then a root. oneDNN Graph runs a root
        # followed by a product (root * sqrt(root)) with its slow reference eltwise kernel
        # (docs/export.md has the times).
        return x / (base * base.sqrt()).sqrt()
    return x / base.pow(beta)


class LocalResponseNorm2d(nn.Module):
    """``nn.LocalResponseNorm`` computed by :func:`local_response_norm_2d` on 4-D inputs (the
    portable form that every runtime runs); other ranks use ``F.local_response_norm``.

    Example:
        >>> lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        >>> x = torch.randn(1, 9, 4, 4)
        >>> torch.allclose(LocalResponseNorm2d.from_module(lrn)(x), lrn(x), rtol=1e-6, atol=0)
        True
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    @classmethod
    def from_module(cls, lrn: nn.LocalResponseNorm) -> LocalResponseNorm2d:
        """The rewrite of ``lrn`` (same size, alpha, beta, k)."""
        return cls(lrn.size, lrn.alpha, lrn.beta, lrn.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        return local_response_norm_2d(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
