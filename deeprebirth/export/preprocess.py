"""The evaluation transform of exported models, in Python (OpenCV), mirrored by the C++ runner.

Steps (``csrc/runner/preprocess.cpp`` does the same, step for step):

1. decode with ``cv2.imread(IMREAD_UNCHANGED)``; convert to RGB float32 in [0, 1]: 8-bit values
   are divided by 255, 16-bit by 65535; grayscale is replicated to 3 channels; an alpha channel
   is dropped (the colour values are kept as they are). Images of more than
   :data:`MAX_IMAGE_PIXELS` pixels are refused: PNG and JPEG files from their header, before
   anything is decoded, other formats after decoding;
2. resize so that the shorter side equals ``resize_size`` (the longer side
   ``int(resize_size * long / short)``, as torchvision's ``Resize``) with ``INTER_AREA`` when
   shrinking and ``INTER_LINEAR`` when enlarging; a longer side above :data:`MAX_IMAGE_SIDE` is
   refused (a 1x20000 image resized to 256 would be 256x5120000: 15.7 GB as float32);
3. centre-crop ``input_size`` (offsets ``round((size - crop) / 2)``, as torchvision's
   ``CenterCrop``);
4. for a 1-channel model (metadata ``color`` "GRAY"), ``cv2.cvtColor(RGB2GRAY)`` (the luma);
5. ``(x - mean) / std`` per channel, laid out as ``(C, H, W)``.

The parameters come from the export metadata (:class:`~deeprebirth.export.metadata.ExportMetadata`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import numpy as np
import torch

from deeprebirth.export.metadata import MAX_IMAGE_SIDE, ExportMetadata

MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE  # decoded images: 2**28 pixels
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: 0xC0-0xCF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _cv2():
    import cv2

    return cv2


def image_header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` of a PNG or JPEG file read from its header, without decoding.

    Returns None for other formats and for headers that do not say (the decoder then judges).
    """
    try:
        with open(path, "rb") as file:
            head = file.read(24)
            if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) == 24:
                width, height = struct.unpack(">II", head[16:24])
                return height, width
            if head[:2] != b"\xff\xd8":
                return None
            file.seek(2)
            while True:  # JPEG segments up to the first frame header
                if file.read(1) != b"\xff":
                    return None
                marker = file.read(1)
                while marker == b"\xff":  # fill bytes
                    marker = file.read(1)
                if not marker or marker[0] in (0xD9, 0xDA):  # end of image, start of scan
                    return None
                if marker[0] == 0x01 or 0xD0 <= marker[0] <= 0xD8:  # no length field
                    continue
                length = file.read(2)
                if len(length) < 2 or struct.unpack(">H", length)[0] < 2:
                    return None
                if marker[0] in _JPEG_FRAME_MARKERS:
                    frame = file.read(5)  # precision, height, width
                    if len(frame) < 5:
                        return None
                    height, width = struct.unpack(">HH", frame[1:5])
                    return (height, width) if height and width else None
                file.seek(struct.unpack(">H", length)[0] - 2, os.SEEK_CUR)
    except OSError:
        return None


def _check_pixels(path: str | os.PathLike, height: int, width: int) -> None:
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"image {os.fspath(path)!r}: the image is {height}x{width} pixels, more than the "
            f"limit of {MAX_IMAGE_PIXELS} pixels ({MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE})"
        )


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image file to RGB float32 ``(H, W, 3)`` in [0, 1].

    Raises:
        ValueError: the file is missing, empty or not a decodable image, has more than
            :data:`MAX_IMAGE_PIXELS` pixels (PNG / JPEG: checked before decoding), or has a
            channel count or depth that has no RGB meaning (the message names the file).
    """
    cv2 = _cv2()
    header = image_header_size(path)
    if header is not None:
        _check_pixels(path, *header)
    image = cv2.imread(os.fspath(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ValueError(f"cannot read image {os.fspath(path)!r} (missing, empty or not an image)")
    _check_pixels(path, *image.shape[:2])
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


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The ``(height, width)`` after resizing the shorter side to ``size`` (torchvision's
    rounding: the longer side truncated)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes ``(H, W, C)`` so that ``min(H, W) == size`` (aspect ratio kept, as torchvision).

    Raises:
        ValueError: the longer side would exceed :data:`MAX_IMAGE_SIDE` (an aspect ratio above
            ``MAX_IMAGE_SIDE / size``).
    """
    cv2 = _cv2()
    height, width = image.shape[:2]
    new_h, new_w = resized_shape(height, width, size)
    if max(new_h, new_w) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"resizing the {height}x{width} image to shorter side {size} gives {new_h}x{new_w}, "
            f"more than the limit of {MAX_IMAGE_SIDE} pixels per side (aspect ratio at most "
            f"{MAX_IMAGE_SIDE / size:.4g}:1 for resize_size {size})"
        )
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


def transform_image(image: np.ndarray, metadata: ExportMetadata) -> torch.Tensor:
    """Steps 2-5 on a decoded image (:func:`read_image_rgb`): the model input ``(C, H, W)``.

    The training data sets use it too (``deeprebirth.train.data``), so that a model is
    evaluated during finetuning on the input it gets once deployed.

    Raises:
        ValueError: the resize would exceed :data:`MAX_IMAGE_SIDE`, or the model takes neither
            RGB nor grayscale input (metadata ``color`` "none").
    """
    if metadata.color not in ("RGB", "GRAY"):
        raise ValueError(
            f"the model takes {metadata.channels}-channel input (color {metadata.color!r}); "
            "images give RGB (3 channels) or grayscale (1)"
        )
    image = center_crop(resize_shorter_side(image, metadata.resize_size), metadata.input_size)
    if metadata.color == "GRAY":
        image = _cv2().cvtColor(np.ascontiguousarray(image), _cv2().COLOR_RGB2GRAY)[..., None]
    mean = np.asarray(metadata.mean, dtype=np.float32)
    std = np.asarray(metadata.std, dtype=np.float32)
    normalized = (image - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))


def eval_transform(path: str | os.PathLike, metadata: ExportMetadata) -> torch.Tensor:
    """The model input ``(C, H, W)`` float32 for one image file, exactly as ``deeprebirth-run``.

    Example:
        >>> meta = ExportMetadata(input_size=[96, 96], resize_size=110)
        >>> eval_transform("cat.jpg", meta).shape  # doctest: +SKIP
        torch.Size([3, 96, 96])

    Raises:
        ValueError: the image cannot be read or is too large (:func:`read_image_rgb`,
            :func:`resize_shorter_side`); the message names the file.
    """
    decoded = read_image_rgb(path)
    try:
        return transform_image(decoded, metadata)
    except ValueError as error:
        raise ValueError(f"image {os.fspath(path)!r}: {error}") from None


def eval_batch(paths: Sequence[str | os.PathLike], metadata: ExportMetadata) -> torch.Tensor:
    """:func:`eval_transform` of several files stacked into ``(N, C, H, W)``."""
    return torch.stack([eval_transform(p, metadata) for p in paths])
