"""Test models built, and exported to each format, once per test module (exports are slow)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import deeprebirth


class ExportCache:
    """Each model of ``builders`` built (on first use) and exported to each format once, into
    ``folder``, from ``example()``, with ``{**metadata, "source_model": name}``; what the export
    printed (ExecuTorch's delegation line) is kept in :attr:`printed`.

    Args:
        suffix: file suffix per format (default: the format's name).
    """

    def __init__(
        self,
        folder: Path,
        builders: dict[str, Callable[[], nn.Module]],
        example: Callable[[], torch.Tensor],
        metadata: dict | None = None,
        suffix: dict[str, str] | None = None,
    ) -> None:
        self.folder, self.builders, self.example = folder, builders, example
        self.metadata, self.suffix = metadata or {}, suffix or {}
        self._models: dict[str, nn.Module] = {}
        self._files: dict[tuple[str, str], Path] = {}
        self.printed: dict[tuple[str, str], str] = {}

    def model(self, name: str) -> nn.Module:
        """The eval-mode model ``name``."""
        if name not in self._models:
            self._models[name] = self.builders[name]()
        return self._models[name]

    def file(self, name: str, format: str) -> Path:
        """The export of ``model(name)`` in ``format``."""
        if (name, format) not in self._files:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                self._files[name, format] = deeprebirth.export(
                    self.model(name),
                    self.example(),
                    format,
                    out=self.folder / f"{name}.{self.suffix.get(format, format)}",
                    metadata={**self.metadata, "source_model": name},
                )
            self.printed[name, format] = printed.getvalue()
        return self._files[name, format]
