"""Checkpoints of the finetune job, written atomically with ``deeprebirth.io.atomic_save``.

A checkpoint holds tensors and plain data only, so resuming runs nothing from the file: the
models as rebuild recipes plus state dicts (the teacher; the partly-slimmed working model as the
student's recipe, the names of the student blocks not swapped in yet and the state dicts of the
working model and of those blocks), the optimizer and scheduler state dicts of the current phase,
the RNG states (torch, numpy, python, CUDA), the phase index and step, and the metric history.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeprebirth.io import UntrustedFileError, atomic_save, safe_load

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "deeprebirth-checkpoint"
CHECKPOINT_VERSION = 2


def rng_state() -> dict[str, Any]:
    """Every RNG the job draws from (torch CPU and CUDA, numpy, python) as tensors and plain data."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["position"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Writes ``record`` (tensors and plain data) plus the RNG states to
    ``output_dir/checkpoint.pt`` atomically."""
    full = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **record}
    return atomic_save({**full, "rng": rng_state()}, Path(output_dir) / CHECKPOINT_NAME)


def checkpoint_path(output_dir: str | os.PathLike) -> Path:
    """Where the job keeps its checkpoint in ``output_dir``."""
    return Path(output_dir) / CHECKPOINT_NAME


def load_checkpoint(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint in ``output_dir`` (RNG states not yet restored), or None if there is none.

    Raises:
        ValueError: the file exists but is empty, truncated, corrupt, foreign, of another version,
            or holds pickled objects (checkpoints of deeprebirth < 2: not resumable).
    """
    path = checkpoint_path(output_dir)
    if not path.is_file():
        return None
    try:
        record = safe_load(path, "checkpoint")
    except UntrustedFileError as error:
        raise ValueError(
            f"{path} holds pickled Python objects (a checkpoint of deeprebirth < 2 or a foreign "
            "file); it is not loaded because that would run code from it. Start a new run."
        ) from error
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a deeprebirth checkpoint")
    if record.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {record.get('version')!r} is not supported "
            f"(this deeprebirth reads version {CHECKPOINT_VERSION})"
        )
    return record
