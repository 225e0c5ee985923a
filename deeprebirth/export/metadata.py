"""The metadata record that travels with every exported file (one JSON schema for all formats).

The record says how to feed the model and what it is, so that loaders (the C++ runner
``deeprebirth-run``, ONNX Runtime pipelines, :func:`deeprebirth.export.preprocess.eval_transform`)
need no extra flags::

    {
      "schema": "deeprebirth-export", "schema_version": 1,
      "format": "torchscript" | "mobile" | "onnx" | "pt2" | "executorch" | "openvino",
      "portable": true | false,
      "input_size": [H, W],        # the centre crop fed to the model
      "resize_size": int,          # the shorter image side is resized to this before the crop
      "channels": C,               # model input channels (absent in older files: 3)
      "color": "RGB" | "GRAY" | "none",   # what the channels hold: RGB order (C = 3), luma
                                   # (C = 1, OpenCV's RGB -> GRAY), none (other C: no image input)
      "mean": [...], "std": [...], # C values each, on channel values scaled to [0, 1]
      "class_names": [str, ...],   # may be empty: then loaders print class indices
      "rules_applied": [str, ...], # surgery rules (e.g. "fold_bn", "streamline:conv1")
      "source_model": str,         # e.g. "bvlc_googlenet"
      "deeprebirth_version": str, "torch_version": str
    }

TorchScript / lite files carry it as the extra file :data:`METADATA_FILE`, ``.pt2`` files as the
extra file of the same name, ONNX files as ``metadata_props[METADATA_KEY]``, ExecuTorch ``.pte``
files as the method ``deeprebirth_metadata`` (it returns the JSON), OpenVINO IR ``.xml`` files as
the ``rt_info`` entry ``deeprebirth/metadata``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from deeprebirth._version import __version__

SCHEMA = "deeprebirth-export"
SCHEMA_VERSION = 1
METADATA_FILE = "deeprebirth.json"
METADATA_KEY = "deeprebirth"
FORMATS = ("torchscript", "mobile", "onnx", "pt2", "executorch", "openvino")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# What the channels of a model input hold, by channel count (other counts: "none").
COLORS = {3: "RGB", 1: "GRAY"}
# The largest crop side and resize size a record may ask for, and the longest side an image may
# have after the resize (deeprebirth.export.preprocess, csrc/runner: the same limit).
MAX_IMAGE_SIDE = 16384
# The most input channels a record may state (csrc/runner: the same limit): a bound for loaders
# that allocate an input from the record alone (deeprebirth-run --bench).
MAX_CHANNELS = 4096


@dataclass
class ExportMetadata:
    """The metadata record of an exported model (see the module docstring for the JSON form).

    Example:
        >>> meta = ExportMetadata(input_size=[96, 96], resize_size=110)
        >>> ExportMetadata.from_json(meta.to_json()).resize_size
        110
    """

    input_size: list[int] = field(default_factory=lambda: [224, 224])
    resize_size: int = 256
    mean: list[float] | None = None  # None: ImageNet's (averaged over RGB for other channels)
    std: list[float] | None = None
    color: str | None = None  # None: from channels (COLORS)
    channels: int = 3
    class_names: list[str] = field(default_factory=list)
    rules_applied: list[str] = field(default_factory=list)
    source_model: str = "unknown"
    format: str = "torchscript"
    portable: bool = False
    deeprebirth_version: str = __version__
    torch_version: str = torch.__version__
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.input_size, Sequence) or not all(map(_is_int, self.input_size)):
            raise ValueError(f"expected input_size [H, W] of integers, but got {self.input_size!r}")
        self.input_size = [int(s) for s in self.input_size]
        if not _is_int(self.channels) or not 0 < self.channels <= MAX_CHANNELS:
            raise ValueError(
                f"expected channels an integer in [1, {MAX_CHANNELS}] (MAX_CHANNELS), but got "
                f"{self.channels!r}"
            )
        self.channels = int(self.channels)
        if self.color is None:
            self.color = COLORS.get(self.channels, "none")
        if self.mean is None:
            self.mean = _per_channel(IMAGENET_MEAN, self.channels)
        if self.std is None:
            self.std = _per_channel(IMAGENET_STD, self.channels)
        self.mean, self.std = [float(m) for m in self.mean], [float(s) for s in self.std]
        self.class_names, self.rules_applied = list(self.class_names), list(self.rules_applied)
        self.validate()

    def validate(self) -> None:
        """Raises ``ValueError`` naming the field when the record is inconsistent.

        Sizes are integers of at most :data:`MAX_IMAGE_SIDE` (a record from a file must not make
        a loader allocate without bound); means and stds are finite.
        """
        sizes = self.input_size
        if len(sizes) != 2 or not all(0 < size <= MAX_IMAGE_SIDE for size in sizes):
            raise ValueError(
                f"expected input_size [H, W] with 0 < H, W <= {MAX_IMAGE_SIDE} (MAX_IMAGE_SIDE), "
                f"but got {self.input_size}"
            )
        if not _is_int(self.resize_size) or not 0 < self.resize_size <= MAX_IMAGE_SIDE:
            raise ValueError(
                f"expected resize_size an integer in [1, {MAX_IMAGE_SIDE}] (MAX_IMAGE_SIDE), "
                f"but got {self.resize_size!r}"
            )
        if self.resize_size < max(self.input_size):
            raise ValueError(
                f"expected resize_size >= the crop {self.input_size}, but got {self.resize_size}"
            )
        values, count = [*self.mean, *self.std], self.channels
        if len(self.mean) != count or len(self.std) != count:
            raise ValueError(
                f"expected {count} means and {count} stds (one per channel, channels={count}), "
                f"got {self.mean}, {self.std}"
            )
        if not all(map(math.isfinite, values)):
            raise ValueError(f"expected finite means and stds, got {self.mean}, {self.std}")
        if min(self.std) <= 0:
            raise ValueError(f"expected positive stds, got {self.std}")
        color = COLORS.get(count, "none")
        if self.color != color:
            raise ValueError(
                f"expected color {color!r} for channels={count}, but got {self.color!r}"
            )
        if self.format not in FORMATS:
            raise ValueError(f"expected format in {FORMATS}, but got {self.format!r}")
        if self.schema != SCHEMA or self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"expected schema {SCHEMA} v{SCHEMA_VERSION}, got {self.schema} v{self.schema_version}"
            )

    def to_json(self) -> str:
        """The record as a JSON string (keys sorted)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ExportMetadata:
        """Parses :meth:`to_json` output; unknown keys are ignored (forward compatibility)."""
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, but got {type(record).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})

    @classmethod
    def build(
        cls,
        example_input: torch.Tensor,
        model_metadata: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> ExportMetadata:
        """The record for a model: crop size and channels from ``example_input`` (N, C, H, W),
        then the fields of a deeprebirth model file's metadata (``deeprebirth.io.load_model``),
        then ``overrides``.

        ``resize_size`` defaults to ``round(max(H, W) * 256 / 224)`` (the ImageNet ratio).
        Keys of ``model_metadata`` that are not record fields are ignored; ``source``/``rules``/
        ``classes`` are accepted as aliases of ``source_model``/``rules_applied``/
        ``class_names``. The crop size and channels of ``example_input`` win over the model file's
        ``input_size`` / ``in_channels`` (the model is exported at the example's shape).
        """
        if example_input.dim() != 4:
            raise ValueError(
                f"expected example_input (N, C, H, W), got {tuple(example_input.shape)}"
            )
        height, width = (int(s) for s in example_input.shape[2:])
        values: dict[str, Any] = {"resize_size": round(max(height, width) * 256 / 224)}
        aliases = {"source": "source_model", "rules": "rules_applied", "classes": "class_names"}
        known = {f.name for f in fields(cls)} - {"input_size", "channels"}
        for source in (model_metadata or {}), (overrides or {}):
            for key, value in source.items():
                key = aliases.get(key, key)
                if key in known:
                    values[key] = _plain(value)
        values.update(input_size=[height, width], channels=int(example_input.shape[1]))
        return cls(**values)


def _per_channel(rgb: Sequence[float], channels: int) -> list[float]:
    """``rgb`` for a 3-channel input, else its average repeated per channel (a grayscale image is
    the luma of an RGB one, so the average is the natural single-channel statistic)."""
    return list(rgb) if channels == 3 else [sum(rgb) / 3] * channels


def _is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a bool or a float."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """Tuples and tensors as lists, so that the record is JSON."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value
