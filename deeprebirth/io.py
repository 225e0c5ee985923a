"""Model files and atomic writes shared by ``slim``, ``finetune`` and ``export``.

A deeprebirth model file carries no code: ``torch.save`` of a dict holding plain data and
tensors only — ``format``, ``version``, the rebuild ``recipe`` (:mod:`deeprebirth.models.recipe`:
source model and surgery steps), the ``state_dict`` and a JSON-ready ``metadata`` dict (source
model, rules applied, input size, class names …). It is read with ``torch.load(weights_only=True)``,
so opening a file runs nothing from it: the architecture is rebuilt by replaying the recipe.
The input a model takes is stored as ``input_size: [H, W]`` and ``in_channels: C``
(:func:`stored_input_geometry` also reads older forms).

Files of deeprebirth before version 2 pickled the whole module; loading those executes code from
the file, so they are refused unless the caller opts in with ``trust_pickle=True``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprebirth.models.recipe import check_recipe, get_recipe, plain_data, rebuild, set_recipe

MODEL_FORMAT = "deeprebirth-model"
MODEL_VERSION = 2


class UntrustedFileError(ValueError):
    """A file needs unpickling of code objects to load, and the caller did not opt in."""


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


def safe_load(
    path: str | os.PathLike,
    what: str,
    trust_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> Any:
    """``torch.load`` that unpickles only tensors and plain data unless ``trust_pickle``.

    Args:
        path: the file.
        what: what the file should be, for messages ("model file", "checkpoint" …).
        trust_pickle: allow arbitrary pickles (runs code from the file: only for files you made).
        map_location: where tensors go.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UntrustedFileError: the file holds pickled objects and ``trust_pickle`` is False.
        ValueError: the file is empty, truncated, corrupt or not a torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is not a readable {what}: the file is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except pickle.UnpicklingError as error:
        if trust_pickle or "GLOBAL" not in str(error):  # no Python object refused: not a pickle
            reason = str(error).strip().splitlines()[-1]
            raise ValueError(f"{path} is not a readable {what}: {reason}") from error
        raise UntrustedFileError(
            f"{path} holds pickled Python objects (an old deeprebirth file or a whole "
            f"torch.save(model)); loading it would run code from the file. If you made it "
            f"yourself, pass trust_pickle=True (CLI: --trust-pickle) to load it"
        ) from error
    except Exception as error:  # corrupt, truncated or foreign file
        raise ValueError(
            f"{path} is not a readable {what}: {type(error).__name__}: {error}"
        ) from error


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    metadata: Mapping[str, Any] | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a deeprebirth model file atomically; returns its path.

    Args:
        path: output file.
        model: a model that carries its rebuild recipe (built by ``build_model`` and changed by
            ``deeprebirth.slim``), or any module when ``recipe`` is given or when the file will
            be loaded with ``template=``.
        metadata: JSON-ready data stored beside the weights.
        recipe: overrides the model's recipe.

    Raises:
        ValueError: metadata or recipe that is not plain data.

    Example:
        >>> net = deeprebirth.models.build_model("bvlc_googlenet", num_classes=10, width=0.25)
        >>> p = save_model("/tmp/m.pt", net, {"source": "example"})
        >>> load_model(p)[1]["source"]
        'example'
    """
    recipe = dict(recipe) if recipe is not None else get_recipe(model)
    if recipe is not None:
        check_recipe(recipe)
    record = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "recipe": plain_data(recipe, "recipe"),
        "metadata": plain_data(dict(metadata or {}), "metadata"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_save(record, path)


def model_from_record(
    record: Mapping[str, Any], where: str, template: nn.Module | None = None
) -> nn.Module:
    """Rebuilds the module of a ``{"recipe", "state_dict"}`` record and loads its weights.

    Args:
        record: holds ``recipe`` (or None) and ``state_dict``.
        where: names the record in messages (file path and key).
        template: the architecture to load into when the record has no recipe (a copy is used).

    Raises:
        ValueError: no recipe and no template, an unknown model or rule, or weights that do not
            fit the architecture.
    """
    import copy

    recipe = record.get("recipe")
    if recipe is not None:
        try:
            model = rebuild(recipe)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where}: cannot rebuild the model: {error}") from error
    elif template is not None:
        model = copy.deepcopy(template)
    else:
        raise ValueError(
            f"{where} has no rebuild recipe (it was saved from a module built by hand): pass "
            "template=<a module of the same architecture> to load its weights into"
        )
    state = record.get("state_dict")
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: no state_dict of tensors")
    first = next((t for t in state.values() if torch.is_floating_point(t)), None)
    if first is not None:
        model = model.to(first.dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{where}: the weights do not fit the rebuilt model: {error}") from error
    return model


def read_model_record(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Any]:
    """The raw record of a model file (``recipe``, ``metadata``, ``state_dict`` …) without
    building its model: what it was made from and for, at the cost of reading the file.

    Raises:
        FileNotFoundError / UntrustedFileError / ValueError: as :func:`load_model`.
    """
    record = safe_load(path, "deeprebirth model file", trust_pickle, "cpu")
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        kind = type(record).__name__
        raise ValueError(
            f"{path} is not a deeprebirth model file (found a {kind}); write it with "
            "deeprebirth.io.save_model"
        )
    return record


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stored_input_geometry(metadata: Mapping[str, Any]) -> tuple[int | None, list[int] | None]:
    """``(channels, [H, W])`` a model file's metadata states (None where it says nothing).

    Written as ``input_size: [H, W]`` with ``in_channels: C`` (``deeprebirth slim`` and the
    finetune job); also read: the older ``[C, H, W]`` (slim) and one int for a square (finetune).

    Raises:
        ValueError: an ``input_size`` or ``in_channels`` of another form, or two channel counts
            that disagree (the message quotes them).

    Example:
        >>> stored_input_geometry({"input_size": [3, 64, 48]})
        (3, [64, 48])
    """
    stored, channels = metadata.get("input_size"), metadata.get("in_channels")
    if channels is not None and (not _is_int(channels) or channels < 1):
        raise ValueError(f"in_channels in the model file must be an integer >= 1, got {channels!r}")
    if stored is None:
        return channels, None
    if _is_int(stored):
        stored = [stored, stored]
    if not isinstance(stored, list | tuple) or len(stored) not in (2, 3):
        raise ValueError(
            f"input_size in the model file must be [H, W], [C, H, W] or one int, got {stored!r}"
        )
    if not all(_is_int(v) and v >= 1 for v in stored):
        raise ValueError(f"input_size in the model file must hold integers >= 1, got {stored!r}")
    if len(stored) == 3:
        if channels is not None and channels != stored[0]:
            raise ValueError(
                f"the model file states {stored[0]} channels in input_size {list(stored)} but "
                f"in_channels {channels}"
            )
        channels = stored[0]
    return channels, [int(stored[-2]), int(stored[-1])]


def load_model(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    trust_pickle: bool = False,
    template: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Reads a file written by :func:`save_model`; returns ``(model, metadata)``.

    Args:
        path: the model file.
        map_location: device of the loaded model.
        trust_pickle: also read files of deeprebirth < 2 (whole pickled modules: this runs code
            from the file, so only for files you made).
        template: the architecture for a file saved without a recipe.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UntrustedFileError: a pickled (old-format) file without ``trust_pickle``.
        ValueError: the file is not a deeprebirth model file (the message says what it is).
    """
    record = read_model_record(path, trust_pickle)
    metadata = dict(record.get("metadata") or {})
    if record.get("version") == 1 and trust_pickle:  # a whole pickled module
        model = record["model"]
    elif record.get("version") == MODEL_VERSION:
        model = model_from_record(record, str(path), template)
        set_recipe(model, record.get("recipe"))
    else:
        raise ValueError(
            f"{path}: deeprebirth model file version {record.get('version')!r} is not supported "
            f"(this deeprebirth reads version {MODEL_VERSION})"
        )
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path} holds a {type(model).__name__}, not an nn.Module")
    return model.to(map_location), metadata
