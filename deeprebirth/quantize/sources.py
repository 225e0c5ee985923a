"""Calibration sets named on the command line: ``synthetic``, ``fashion_mnist[:ROOT]`` or an
image folder.

- ``synthetic``: standard-normal images (seeded). Their ranges are not those of real data: for
  smoke tests and timing, not for a model that will see real images.
- ``fashion_mnist`` / ``fashion_mnist:ROOT``: the Fashion-MNIST training images (IDX files; the
  Debian package ``dataset-fashion-mnist`` by default), prepared as the finetune job prepares
  them (:class:`deeprebirth.train.data.FashionMNIST`: normalised, resized or padded).
- a folder: its image files (searched recursively, sorted by path), each through the
  evaluation transform of the exported model (:func:`deeprebirth.export.preprocess.eval_transform`:
  the model file's mean, std and resize size; RGB, or luma for a 1-channel model), the input the
  deployed model gets.

:func:`calibration_source` checks the source before any image is read and returns the images
lazily, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from deeprebirth.export.metadata import ExportMetadata
from deeprebirth.quantize.backends import QuantizeError

SYNTHETIC = "synthetic"
FASHION_MNIST = "fashion_mnist"


@dataclass
class CalibrationSource:
    """A checked calibration set: iterate for the images ``(C, H, W)`` (at most ``limit``).

    Attributes:
        description: what it is, e.g. ``"256 images of /data/val (evaluation transform)"``.
    """

    description: str
    _images: Iterator[torch.Tensor]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self._images


def _synthetic(shape: tuple[int, int, int], limit: int, seed: int) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(limit):
        yield torch.randn(shape, generator=generator)


def _folder_images(files: list[Path], record: ExportMetadata, limit: int) -> Iterator[torch.Tensor]:
    from deeprebirth.export.preprocess import eval_transform

    for path in files[:limit]:
        yield eval_transform(path, record)


def _fashion_mnist(
    root: Path, shape: tuple[int, int, int], limit: int, fit: str
) -> Iterator[torch.Tensor]:
    from deeprebirth.train.data import FashionMNIST

    channels, size, _ = shape
    dataset = FashionMNIST(root, "train", size, channels, augment=False, limit=limit, fit=fit)
    for index in range(len(dataset)):
        yield dataset[index][0]


def calibration_source(
    spec: str,
    shape: tuple[int, int, int],
    metadata: ExportMetadata,
    limit: int,
    seed: int = 0,
    fit: str = "resize",
) -> CalibrationSource:
    """The calibration set named by ``spec`` for a model taking ``shape`` ``(C, H, W)``.

    Args:
        spec: ``"synthetic"``, ``"fashion_mnist"``, ``"fashion_mnist:ROOT"`` or a folder.
        metadata: the export record of the model for image folders (crop ``[H, W]``, mean, std,
            resize size: ``ExportMetadata.build(example, model_file_metadata)``).
        limit: the most images to use (>= 1).
        seed: of the synthetic images.
        fit: Fashion-MNIST only: ``"resize"`` or ``"pad"`` the 28x28 images to H x W, as the
            model was trained (the finetune job's ``data.fit``).

    Raises:
        QuantizeError: ``limit`` < 1, a missing folder or IDX file, a folder without images, an
            image folder for a model that takes neither RGB nor grayscale input, Fashion-MNIST
            for a non-square input or an unknown ``fit``; the message names the source.
    """
    if limit < 1:
        raise QuantizeError(f"expected at least 1 calibration image, but got a limit of {limit}")
    channels, height, width = shape
    if spec == SYNTHETIC:
        return CalibrationSource(
            f"{limit} synthetic images (standard normal, seed {seed})",
            _synthetic(shape, limit, seed),
        )
    if spec == FASHION_MNIST or spec.startswith(f"{FASHION_MNIST}:"):
        from deeprebirth.train.data import FASHION_MNIST_ROOT

        root = Path(spec.partition(":")[2] or FASHION_MNIST_ROOT)
        needed = root / "train-images-idx3-ubyte.gz"
        if not needed.is_file():
            raise QuantizeError(
                f"calibration {spec!r}: {needed} not found (Fashion-MNIST IDX files; Debian "
                "package dataset-fashion-mnist)"
            )
        if height != width or fit not in ("resize", "pad"):
            raise QuantizeError(
                f"calibration {spec!r}: expected a square input and fit 'resize' or 'pad', but "
                f"got {height}x{width} and fit {fit!r}"
            )
        return CalibrationSource(
            f"{limit} Fashion-MNIST training images of {root} ({fit} to {height}x{width})",
            _fashion_mnist(root, shape, limit, fit),
        )
    folder = Path(spec)
    if not folder.is_dir():
        raise QuantizeError(
            f"calibration {spec!r} is not a folder, 'synthetic' or 'fashion_mnist[:ROOT]'"
        )
    from deeprebirth.train.data import IMAGE_EXTENSIONS

    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise QuantizeError(
            f"calibration folder {folder} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    if metadata.color not in ("RGB", "GRAY"):
        raise QuantizeError(
            f"calibration folder {folder}: images give RGB or grayscale input, but the model "
            f"takes {channels} channels; use 'fashion_mnist[:ROOT]' or 'synthetic'"
        )
    if list(metadata.input_size) != [height, width]:
        raise QuantizeError(
            f"calibration folder {folder}: the metadata crops {metadata.input_size}, but the "
            f"model takes {height}x{width}"
        )
    count = min(limit, len(files))
    return CalibrationSource(
        f"{count} images of {folder} (evaluation transform, {height}x{width})",
        _folder_images(files, metadata, limit),
    )
