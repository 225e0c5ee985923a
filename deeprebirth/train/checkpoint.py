"""Checkpoints of the finetune job, written atomically with ``deeprebirth.io.atomic_save``.

A checkpoint holds the models (whole modules: the partly-slimmed working model, the student
blocks not merged yet, the teacher), the optimizer and scheduler of the current phase, the RNG
states (torch, numpy, python, CUDA), the phase index and step within it, and the metric history.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeprebirth.io import atomic_save

CHECKPOINT_NAME = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG the job draws from: torch (CPU and CUDA), numpy, python."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Writes ``record`` plus the RNG states to ``output_dir/checkpoint.pt`` atomically."""
    return atomic_save({**record, "rng": rng_state()}, Path(output_dir) / CHECKPOINT_NAME)


def load_checkpoint(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint in ``output_dir`` (RNG states not yet restored), or None if there is none.

    Raises:
        ValueError: the file exists but cannot be read.
    """
    path = Path(output_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"{path}: unreadable checkpoint: {error}") from error
