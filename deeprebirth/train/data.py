"""Datasets of the finetune job: ImageNet-style folders, Fashion-MNIST (Debian IDX files), synthetic.

Every root is validated by :func:`build_datasets` before training: a missing folder, a class
folder without images or too many unreadable images raise :class:`DataError` naming the path; a
few unreadable images (at most ``data.max_corrupt_fraction``) are skipped with a warning and
counted in :attr:`Datasets.skipped`. An image that fails to decode during training is replaced by
the next sample (warning, counted in :attr:`Datasets.skipped` too, also from DataLoader workers),
so an epoch never crashes on one bad file.
"""

from __future__ import annotations

import functools
import gzip
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from deeprebirth.compat.torchvision import import_torchvision
from deeprebirth.export.metadata import ExportMetadata
from deeprebirth.export.preprocess import MAX_IMAGE_PIXELS, read_image_rgb, transform_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DataError(ValueError):
    """A data root or file that cannot be used; the message names the path and the problem."""


@dataclass
class Datasets:
    """The train and validation datasets, class names and the unreadable images skipped.

    ``unreadable`` lists the images validation found unreadable (left out of the datasets);
    ``folders`` holds the image-folder datasets, which record images that fail later, at decode
    time; :attr:`skipped` is both.
    """

    train: Dataset
    val: Dataset
    classes: list[str]
    unreadable: list[str] = field(default_factory=list)
    folders: list[SkippingImageFolder] = field(default_factory=list, repr=False)

    @property
    def skipped(self) -> list[str]:
        """Every unreadable image skipped so far: found by validation, then while training or
        evaluating (in any DataLoader worker of this process; each rank counts its own)."""
        return list(self.unreadable) + [p for f in self.folders for p in f.failed_paths()]


# --------------------------------------------------------------------------- Fashion-MNIST (IDX)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one (optionally gzip-compressed) IDX file into a numpy array.

    IDX: 2 zero bytes, a type code (0x08 = uint8), the number of dimensions, then big-endian
    int32 sizes and the data. Example: ``read_idx(".../t10k-labels-idx1-ubyte.gz").shape == (10000,)``.

    Raises:
        DataError: the file is missing, truncated or not an unsigned-byte IDX file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise DataError(f"{path}: cannot read IDX file: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: expected an unsigned-byte IDX file (magic 0x0000 08 nn)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(
            f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {data.size}"
        )
    return data.reshape(dims)


class FashionMNIST(Dataset):
    """Fashion-MNIST from its IDX files, as normalised tensors of the configured size.

    Each 28x28 image is resized (bilinear, ``fit="resize"``) or zero-padded (``fit="pad"``,
    centred; needs ``size >= 28``) to ``size`` x ``size``, normalised with the dataset's
    mean/std and repeated to ``channels`` channels. ``augment`` adds a random horizontal flip and
    a random translation of up to 1/8 of the size (zero padding).

    Shape: item ``(image (channels, size, size) float32, label int)``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        size: int,
        channels: int,
        augment: bool = False,
        limit: int = 0,
        fit: str = "resize",
    ) -> None:
        prefix = "train" if split == "train" else "t10k"
        root = Path(root)
        self.images = torch.from_numpy(read_idx(root / f"{prefix}-images-idx3-ubyte.gz").copy())
        self.labels = torch.from_numpy(read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").copy())
        if len(self.images) != len(self.labels):
            raise DataError(
                f"{root}: {len(self.images)} {prefix} images but {len(self.labels)} labels"
            )
        if limit:
            self.images, self.labels = self.images[:limit], self.labels[:limit]
        if fit == "pad" and size < self.images.shape[-1]:
            raise DataError(
                f"data.fit=pad needs model.input_size >= {self.images.shape[-1]}, but got {size}"
            )
        self.size, self.channels, self.augment, self.fit = size, channels, augment, fit

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255.0)[None, None]
        if image.shape[-1] != self.size and self.fit == "pad":
            before = (self.size - image.shape[-1]) // 2
            after = self.size - image.shape[-1] - before
            image = F.pad(image, (before, after, before, after))
        elif image.shape[-1] != self.size:
            image = F.interpolate(
                image, size=(self.size, self.size), mode="bilinear", align_corners=False
            )
        image = (image[0] - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        if self.augment:
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
            shift = max(1, self.size // 8)
            dx, dy = torch.randint(-shift, shift + 1, (2,)).tolist()
            image = torch.roll(image, (dy, dx), (-2, -1))
        return image.expand(self.channels, -1, -1).contiguous(), int(self.labels[index])


# ------------------------------------------------------------------------------- image folders


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def unreadable_images(paths: list[Path]) -> list[Path]:
    """The subset of ``paths`` that PIL cannot open and verify (header + structure check), or
    that has more pixels than the decoder takes (``MAX_IMAGE_PIXELS``)."""
    from PIL import Image

    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
                if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
                    bad.append(path)
        except Exception:
            bad.append(path)
    return bad


def validate_image_folder(
    split_root: Path, max_corrupt_fraction: float, verify_limit: int = 0
) -> tuple[list[str], list[Path]]:
    """Checks an ImageFolder split; returns ``(class names, unreadable images to skip)``.

    Raises:
        DataError: the folder is missing, has no class folders, a class folder has no images,
            or more than ``max_corrupt_fraction`` of the checked images are unreadable (the
            message lists the first few).
    """
    if not split_root.is_dir():
        raise DataError(f"data folder not found: {split_root} (expected one sub-folder per class)")
    classes = sorted(p.name for p in split_root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{split_root}: no class folders (expected {split_root}/<class>/<image>)")
    images: list[Path] = []
    for name in classes:
        files = sorted(p for p in (split_root / name).rglob("*") if p.is_file() and _is_image(p))
        if not files:
            raise DataError(
                f"{split_root / name}: empty class folder (no files with extensions {IMAGE_EXTENSIONS})"
            )
        images.extend(files)
    checked = images if verify_limit <= 0 else images[:: max(1, len(images) // verify_limit)]
    bad = unreadable_images(checked)
    if len(bad) > max_corrupt_fraction * len(checked):
        listed = ", ".join(str(p) for p in bad[:5])
        raise DataError(
            f"{split_root}: {len(bad)} of {len(checked)} images are unreadable (allowed: "
            f"data.max_corrupt_fraction={max_corrupt_fraction}): {listed}"
        )
    for path in bad:
        warnings.warn(f"skipping unreadable image {path}", RuntimeWarning, stacklevel=2)
    return classes, bad


class SkippingImageFolder(Dataset):
    """``torchvision.datasets.ImageFolder`` without the given files, robust to decode errors.

    Images are decoded by :func:`deeprebirth.export.preprocess.read_image_rgb`, the decoder of
    ``eval_transform`` and (mirrored) ``deeprebirth-run``: 16-bit files keep their depth (divided
    by 65535; PIL's ``convert("RGB")`` would clip them), and the same size limits apply.

    A sample that fails to load is replaced by the next one, with a warning, and flagged in a
    shared-memory tensor (one flag per sample), so that failures in DataLoader worker processes
    (forked or spawned) reach the main process: :meth:`failed_paths` lists them and
    :attr:`failures` counts them (each image once, however often it fails).
    """

    def __init__(self, root: Path, transform: Callable, exclude: list[Path]) -> None:
        tv = import_torchvision()
        excluded = {str(p) for p in exclude}
        self.folder = tv.datasets.ImageFolder(
            str(root),
            transform=transform,
            loader=read_image_rgb,
            is_valid_file=lambda p: _is_image(Path(p)) and p not in excluded,
        )
        self.classes = self.folder.classes
        self._failed = torch.zeros(len(self.folder), dtype=torch.bool).share_memory_()

    @property
    def failures(self) -> int:
        """How many images failed to load so far."""
        return int(self._failed.sum())

    def failed_paths(self) -> list[str]:
        """The images that failed to load so far, in sample order."""
        return [self.folder.samples[i][0] for i in self._failed.nonzero().flatten().tolist()]

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        for attempt in range(len(self.folder)):
            position = (index + attempt) % len(self.folder)
            try:
                return self.folder[position]
            except Exception as error:  # corrupt file found only at decode time
                self._failed[position] = True
                warnings.warn(
                    f"skipping unreadable image {self.folder.samples[position][0]}: {error}",
                    RuntimeWarning,
                    stacklevel=2,
                )
        raise DataError(f"no readable image in {self.folder.root}")


def _chw_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` numpy -> ``(C, H, W)`` tensor (the decoder's layout -> torchvision's)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def imagenet_transforms(size: int, augment: bool):
    """The ImageNet ``(train, val)`` transforms of decoded images (:func:`read_image_rgb`: RGB
    float32 ``(H, W, 3)`` in [0, 1], as every image-folder sample is decoded).

    val, and train without ``augment``: the deployed model's transform
    (:func:`deeprebirth.export.preprocess.transform_image`: shorter side to
    ``round(size * 256 / 224)``, the export metadata's default, centre crop ``size``); train with
    ``augment``: random-resized crop + horizontal flip. Both normalise with the ImageNet mean/std.
    """
    tv = import_torchvision()
    T = tv.transforms
    deployed = ExportMetadata(
        input_size=[size, size],
        resize_size=round(size * 256 / 224),
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
    )
    evaluate = functools.partial(transform_image, metadata=deployed)
    if not augment:
        return evaluate, evaluate
    train = T.Compose(
        [
            _chw_tensor,
            T.RandomResizedCrop(size, antialias=True),
            T.RandomHorizontalFlip(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    return train, evaluate


# --------------------------------------------------------------------------------- synthetic


def synthetic_dataset(
    size: int, num_classes: int, channels: int, image_size: int, seed: int
) -> TensorDataset:
    """A learnable random dataset: each class has its own fixed pattern, plus noise.

    Shape: item ``(image (channels, image_size, image_size), label)``. Deterministic in ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(num_classes, channels, image_size, image_size, generator=generator)
    labels = torch.randint(num_classes, (size,), generator=generator)
    noise = torch.randn(size, channels, image_size, image_size, generator=generator)
    return TensorDataset(patterns[labels] + noise, labels)


# ----------------------------------------------------------------------------------- factory


def input_normalization(cfg) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` per input channel that the data of ``cfg`` is normalised with (what an
    exported model's metadata must carry to be fed the same values), or None for synthetic data.
    """
    channels = cfg.model.in_channels
    if cfg.data.name == "fashion_mnist":  # one grey plane, repeated to every channel
        return [FASHION_MNIST_MEAN] * channels, [FASHION_MNIST_STD] * channels
    if cfg.data.name == "imagenet":
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return None


def build_datasets(cfg) -> Datasets:
    """Builds and validates the datasets named by ``cfg.data`` (see ``deeprebirth.train.config``).

    Raises:
        DataError: a missing or unusable root, named in the message, or a training set smaller
            than one batch (``batch_size``: the job drops incomplete batches).
    """
    datasets = _build_datasets(cfg)
    if len(datasets.train) < cfg.batch_size:
        raise DataError(
            f"batch_size is {cfg.batch_size}, larger than the {len(datasets.train)} training "
            f"samples of data.name={cfg.data.name} (no full batch to train on)"
        )
    return datasets


def _build_datasets(cfg) -> Datasets:
    data, model = cfg.data, cfg.model
    if data.name == "synthetic":
        # One draw split in two: train and val share the class patterns, not the noise.
        size = data.synthetic_train_size + data.synthetic_val_size
        full = synthetic_dataset(
            size, model.num_classes, model.in_channels, model.input_size, cfg.seed
        )
        images, labels = full.tensors
        n = data.synthetic_train_size
        train, val = TensorDataset(images[:n], labels[:n]), TensorDataset(images[n:], labels[n:])
        return Datasets(train, val, [str(i) for i in range(model.num_classes)])
    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"data.root: folder not found: {root}")
    if data.name == "fashion_mnist":
        shape = (model.input_size, model.in_channels)
        train = FashionMNIST(root, "train", *shape, data.augment, data.train_limit, data.fit)
        val = FashionMNIST(root, "test", *shape, False, data.val_limit, data.fit)
        return Datasets(train, val, list(FASHION_MNIST_CLASSES))
    if model.in_channels != 3:
        raise DataError(
            f"model.in_channels: imagenet data has 3 channels, but got {model.in_channels}"
        )
    train_tf, val_tf = imagenet_transforms(model.input_size, data.augment)
    folders: list[SkippingImageFolder] = []
    splits = {}
    skipped: list[str] = []
    for split, transform, limit in (
        (data.train_split, train_tf, data.train_limit),
        (data.val_split, val_tf, data.val_limit),
    ):
        classes, bad = validate_image_folder(
            root / split, data.max_corrupt_fraction, data.verify_limit
        )
        skipped += [str(p) for p in bad]
        folders.append(SkippingImageFolder(root / split, transform, bad))
        dataset: Dataset = folders[-1]
        if limit:
            dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
        splits[split] = (dataset, classes)
    train, classes = splits[data.train_split]
    val, val_classes = splits[data.val_split]
    if val_classes != classes:
        raise DataError(
            f"{root}: {data.train_split}/ and {data.val_split}/ have different class folders"
        )
    if len(classes) != model.num_classes:
        raise DataError(
            f"model.num_classes is {model.num_classes} but {root / data.train_split} has {len(classes)} class folders"
        )
    return Datasets(train, val, classes, skipped, folders)
