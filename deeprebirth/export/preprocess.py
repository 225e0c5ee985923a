"""The evaluation transform of exported models, in Python (OpenCV), mirrored by the C++ runner.

Steps (``csrc/runner/preprocess.cpp`` does the same, step for step):

1. decode with ``cv2.imread(IMREAD_UNCHANGED)``; convert to RGB float32 in [0, 1]: 8-bit values
   are divided by 255, 16-bit by 65535; grayscale is replicated to 3 channels; an alpha channel
   is dropped (the colour values are kept as they are);
2. resize so that the shorter side equals ``resize_size`` (the longer side
   ``int(resize_size * long / short)``, as torchvision's ``Resize``) with ``INTER_AREA`` when
   shrinking and ``INTER_LINEAR`` when enlarging;
3. centre-crop ``input_size`` (offsets ``round((size - crop) / 2)``, as torchvision's
   ``CenterCrop``);
4. ``(x - mean) / std`` per channel, laid out as ``(3, H, W)``.

The parameters come from the export metadata (:class:`~deeprebirth.export.metadata.ExportMetadata`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from deeprebirth.export.metadata import ExportMetadata


def _cv2():
    import cv2

    return cv2


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file to RGB float32 ``(H, W, 3)`` in [0, 1].

    Raises:
        ValueError: the file is missing, empty or not a decodable image, or has a channel count
            or depth that has no RGB meaning (the message names the file).
    """
    cv2 = _cv2()
    image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ValueError(f"cannot read image {os.fspath(path)!r} (missing, empty or not an image)")
    if image.dtype == np.uint8:
        scaled = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        scaled = image.astype(np.float32) / 65535.0
    elif image.dtype == np.float32:
        scaled = image
    else:
        raise ValueError(f"image {os.fspath(path)!r}: unsupported pixel type {image.dtype}")
    if scaled.ndim == 2 or scaled.shape[2] == 1:
        return cv2.cvtColor(scaled.reshape(scaled.shape[:2]), cv2.COLOR_GRAY2RGB)
    if scaled.shape[2] == 3:
        return cv2.cvtColor(scaled, cv2.COLOR_BGR2RGB)
    if scaled.shape[2] == 4:
        return cv2.cvtColor(scaled, cv2.COLOR_BGRA2RGB)
    raise ValueError(f"image {os.fspath(path)!r}: unsupported channel count {scaled.shape[2]}")


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes ``(H, W, C)`` so that ``min(H, W) == size`` (aspect ratio kept, as torchvision)."""
    cv2 = _cv2()
    height, width = image.shape[:2]
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    if (new_h, new_w) == (height, width):
        return image
    interpolation = cv2.INTER_AREA if new_h < height else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


def center_crop(image: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    """Crops the centre ``(crop_h, crop_w)`` of ``(H, W, C)`` (torchvision's offset rounding)."""
    height, width = image.shape[:2]
    crop_h, crop_w = int(crop[0]), int(crop[1])
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the image {height}x{width}")
    top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    return image[top : top + crop_h, left : left + crop_w]


def eval_transform(path: str | os.PathLike, metadata: ExportMetadata) -> torch.Tensor:
    """The model input ``(3, H, W)`` float32 for one image file, exactly as ``deeprebirth-run``.

    Example:
        >>> meta = ExportMetadata(input_size=[96, 96], resize_size=110)
        >>> eval_transform("cat.jpg", meta).shape  # doctest: +SKIP
        torch.Size([3, 96, 96])
    """
    image = center_crop(
        resize_shorter_side(read_image_rgb(path), metadata.resize_size), metadata.input_size
    )
    mean = np.asarray(metadata.mean, dtype=np.float32)
    std = np.asarray(metadata.std, dtype=np.float32)
    normalized = (image - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))


def eval_batch(paths: Sequence[str | os.PathLike], metadata: ExportMetadata) -> torch.Tensor:
    """:func:`eval_transform` of several files stacked into ``(N, 3, H, W)``."""
    return torch.stack([eval_transform(p, metadata) for p in paths])
