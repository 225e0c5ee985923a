"""Model files and atomic writes shared by ``slim``, ``finetune`` and ``export``.

A deeprebirth model file is ``torch.save({"format": "deeprebirth-model", "version": 1,
"model": <nn.Module>, "metadata": {...}})``: the whole module (so slimmed architectures need no
separate definition) plus a metadata dict (source model, rules applied, input size, mean/std,
class names …). Loading unpickles code, so load only files you trust.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_FORMAT = "deeprebirth-model"


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_model(
    path: str | os.PathLike, model: nn.Module, metadata: dict[str, Any] | None = None
) -> Path:
    """Writes a deeprebirth model file atomically; returns its path.

    Example:
        >>> p = save_model("/tmp/m.pt", nn.Linear(2, 2), {"source": "example"})
        >>> load_model(p)[1]["source"]
        'example'
    """
    record = {
        "format": MODEL_FORMAT,
        "version": 1,
        "model": model,
        "metadata": dict(metadata or {}),
    }
    return atomic_save(record, path)


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Reads a file written by :func:`save_model`; returns ``(model, metadata)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a deeprebirth model file (the message says what it is).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        record = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # corrupt or foreign file
        raise ValueError(f"{path} is not a readable deeprebirth model file: {error}") from error
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        kind = type(record).__name__
        raise ValueError(
            f"{path} is not a deeprebirth model file (found a {kind}); write it with deeprebirth.io.save_model"
        )
    return record["model"], record["metadata"]
