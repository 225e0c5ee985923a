"""Winograd convolution of 3x3 stride-1 layers: ``winograd_pack`` and ``winograd_conv2d``.

F(2x2, 3x3) computes each 2x2 block of outputs from a 4x4 input patch with 16 multiplications per
channel pair instead of 36 (Lavin & Gray, CVPR 2016): 2.25x fewer multiply-adds than a direct
convolution. F(4x4, 3x3) computes 4x4 blocks from 6x6 patches with 36 instead of 144: 4x fewer,
on a transformed weight 2.25x larger than F(2x2)'s and with rounding errors about ten times
larger (still within about 2e-5 of the output's magnitude). Either runs on a weight transformed
once (``winograd_pack``). ``small_conv2d`` runs them on frozen weights wherever one times faster
than oneDNN, which is how ``PackedConv2d`` and frozen TorchScript use them; docs/kernels.md has
the measurements.
"""

from __future__ import annotations

import torch

from deeprebirth.ops import _library
from deeprebirth.ops._args import pair

_library.load_extension()


def winograd_pack(w: torch.Tensor, tile: int = 2) -> torch.Tensor:
    """``w`` ``(C_out, C_in, 3, 3)`` (float32, CPU) transformed for :func:`winograd_conv2d` with
    output tiles of ``tile`` x ``tile`` pixels: F(2x2, 3x3) (``tile=2``) gives
    ``(16, ceil(C_out / 16), C_in, 16)``, F(4x4, 3x3) (``tile=4``) ``(36, ...)``, the lanes past
    ``C_out`` zero. Transform once per weight; :func:`winograd_conv2d` tells the two apart by shape.

    Raises:
        RuntimeError: ``w`` is not a float32 3x3 weight, ``tile`` is not 2 or 4, or ``w`` holds an
            infinity or NaN (which the transforms would spread over whole blocks of outputs).

    Example:
        >>> winograd_pack(torch.randn(20, 8, 3, 3)).shape
        torch.Size([16, 2, 8, 16])
        >>> winograd_pack(torch.randn(20, 8, 3, 3), tile=4).shape
        torch.Size([36, 2, 8, 16])
    """
    return torch.ops.deeprebirth.winograd_pack(w, tile)


def winograd_conv2d(
    x: torch.Tensor,
    packed_w: torch.Tensor,
    b: torch.Tensor | None,
    out_channels: int,
    padding: int | tuple[int, int] = 1,
    relu: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu?(conv2d(x, w, b, stride=1, padding=padding))`` by Winograd on ``packed_w`` =
    :func:`winograd_pack` ``(w, tile)``, ``w`` of shape ``(out_channels, C_in, 3, 3)``: F(2x2, 3x3)
    or F(4x4, 3x3), as ``packed_w`` was made for.

    Float32 CPU inference (no gradient: a call that would need one raises). The output is in
    ``x``'s memory format (channels_last for a channels_last ``x``) and within about 1e-6
    (F(2x2)) or 2e-5 (F(4x4)) of its magnitude of ``conv2d``'s. ``x`` must be finite: an infinity
    or NaN reaches its whole block of outputs, where ``conv2d`` gives it to some of them
    (``small_conv2d`` checks and runs oneDNN for such inputs).

    ``out``: write the result there and return it; channels_last, or a channel slice
    (``narrow``) of a channels_last tensor, so that concatenated layers need no ``torch.cat``.

    Raises:
        RuntimeError: arguments that do not fit (named in the message).

    Example:
        >>> x, w = torch.randn(1, 8, 9, 9), torch.randn(16, 8, 3, 3)
        >>> y = winograd_conv2d(x, winograd_pack(w), None, 16, padding=1, relu=True)
        >>> torch.allclose(y, torch.relu(torch.nn.functional.conv2d(x, w, padding=1)), atol=1e-4)
        True
    """
    if out is not None:
        return torch.ops.deeprebirth.winograd_conv2d.out(
            x, packed_w, b, out_channels, pair(padding, "padding"), relu, out=out
        )
    return torch.ops.deeprebirth.winograd_conv2d(
        x, packed_w, b, out_channels, pair(padding, "padding"), relu
    )
