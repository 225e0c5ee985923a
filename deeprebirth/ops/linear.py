"""Linear layers across the intra-op threads: ``linear``.

ATen's linear for a few rows (a classifier at batch 1 to 32) runs its matrix product on one thread
here, so the whole weight streams through one core. ``deeprebirth::linear`` gives each thread its
own block of output features (its own rows of the weight); ``InferenceLinear`` runs it in deployed
models. docs/kernels.md ("Linear layers across threads") has the measurements.
"""

from __future__ import annotations

import torch

from deeprebirth.ops import _library

_library.load_extension()


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.nn.functional.linear(x, w, b)``: ``x @ w.T + b``, shape ``(..., N)``.

    A CPU float32/float64 call splits the output features across the intra-op threads; any other
    call (and one that needs a gradient, through autograd) is ATen's linear, which also raises
    ATen's errors. Values as ATen's within the rounding of a matrix product blocked another way.
    CPU tensors only.

    Example:
        >>> x, w, b = torch.randn(2, 64), torch.randn(100, 64), torch.randn(100)
        >>> torch.allclose(linear(x, w, b), torch.nn.functional.linear(x, w, b), atol=1e-5)
        True
    """
    return torch.ops.deeprebirth.linear(x, w, b)
