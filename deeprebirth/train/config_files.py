"""Where ``--config`` finds its file: a path, or the name of a config that ships with deeprebirth.

The configs of the repository's ``configs/`` folder are package data (``deeprebirth/configs`` in
an installed wheel), so ``deeprebirth finetune --config synthetic_smoke`` works from any folder.
An editable install or a source checkout reads the checkout's ``configs/`` instead.

Example:
    >>> resolve_config_path("synthetic_smoke").name
    'synthetic_smoke.yaml'
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # deeprebirth/


def packaged_config_dir() -> Path | None:
    """The folder of the shipped configs: ``deeprebirth/configs`` in an installed package, else
    the checkout's ``configs/`` (editable install); None when neither exists."""
    for folder in (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parent / "configs"):
        if folder.is_dir():
            return folder
    return None


def available_configs() -> list[str]:
    """The names ``--config`` accepts besides paths: ``fashion_mnist_demo``, ``synthetic_smoke``, …"""
    folder = packaged_config_dir()
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder else []


def resolve_config_path(config: str | os.PathLike) -> Path:
    """The YAML file ``config`` names: an existing file, or a packaged config's name (no folder,
    no ``.yaml``).

    Raises:
        FileNotFoundError: neither; the message lists the packaged config names.
    """
    path = Path(config)
    if path.is_file():
        return path
    is_name = path.name == str(config) and not path.suffix
    folder = packaged_config_dir()
    if is_name and folder is not None and (folder / f"{path.name}.yaml").is_file():
        return folder / f"{path.name}.yaml"
    names = ", ".join(available_configs()) or "none found"
    what = "config name" if is_name else "config file"
    raise FileNotFoundError(
        f"{what} not found: {config} (a YAML file path, or one of the packaged configs: {names})"
    )
