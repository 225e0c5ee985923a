"""Calibration: the images whose activation ranges the observers of a prepared model record.

A calibration set is any iterable of image batches ``(N, C, H, W)``, single images ``(C, H, W)``
or ``(images, labels)`` pairs (what a ``DataLoader`` over a labelled data set yields); labels are
ignored. It is read once into memory, so quantization-aware training can go over it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from deeprebirth.quantize.backends import QuantizeError


def _images_of(item: Any, index: int) -> torch.Tensor:
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        item = item[0]  # (images, labels)
    if not isinstance(item, torch.Tensor) or item.dim() not in (3, 4):
        shape = list(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
        raise QuantizeError(
            f"calibration item {index}: expected images (N, C, H, W), one image (C, H, W) or "
            f"(images, labels), but got {shape}"
        )
    return (item[None] if item.dim() == 3 else item).detach().float().cpu()


def collect_calibration_batches(
    calibration: Iterable[Any],
    image_shape: tuple[int, int, int] | None = None,
    limit: int = 0,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """The calibration images as batches of at most ``batch_size`` (``limit`` > 0: only the
    first ``limit`` images).

    Args:
        calibration: see the module docstring.
        image_shape: ``(C, H, W)`` every image must have (the model's input), or None.

    Raises:
        QuantizeError: no images at all, an item of another form, or an image of another shape
            than ``image_shape`` (the message names the item).

    Example:
        >>> [b.shape[0] for b in collect_calibration_batches([torch.zeros(5, 3, 8, 8)], batch_size=2)]
        [2, 2, 1]
    """
    if batch_size < 1:
        raise QuantizeError(f"expected a calibration batch_size >= 1, but got {batch_size}")
    pending: list[torch.Tensor] = []
    count = 0
    for index, item in enumerate(calibration):
        images = _images_of(item, index)
        if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
            raise QuantizeError(
                f"calibration item {index}: expected images of shape {list(image_shape)} (the "
                f"model's input), but got {list(images.shape[1:])}"
            )
        if limit:
            images = images[: limit - count]
        pending.append(images)
        count += len(images)
        if limit and count >= limit:
            break
    if count == 0:
        raise QuantizeError(
            "no calibration images: the observers need at least one image to measure the "
            "activation ranges"
        )
    return list(torch.cat(pending).split(batch_size))


@torch.no_grad()
def run_calibration(prepared: nn.Module, batches: list[torch.Tensor]) -> int:
    """Runs every batch through ``prepared`` (the output of ``prepare_pt2e``), whose observers
    record the ranges; returns the number of images."""
    for batch in batches:
        prepared(batch)
    return sum(len(batch) for batch in batches)
