"""Models by name: ``build_model("bvlc_googlenet")``, ``build_model("torchvision:resnet50")``.

torchvision is imported only through :func:`deeprebirth.compat.torchvision.import_torchvision`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprebirth.models.bvlc_googlenet import bvlc_googlenet

TORCHVISION_PREFIX = "torchvision:"
# torchvision models whose default initialisation warns unless told (and costs seconds via
# truncated normals): pass init_weights=True explicitly when no weights are loaded.
_INIT_WEIGHTS_MODELS = ("googlenet", "inception_v3")


def _is_path(weights: str | os.PathLike) -> bool:
    text = str(weights)
    return isinstance(weights, os.PathLike) or os.sep in text or text.endswith((".pth", ".pt"))


def _load_state_dict(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model.load_state_dict(state)
    return model


def available_models() -> list[str]:
    """Names :func:`build_model` accepts (torchvision's list needs torchvision)."""
    from deeprebirth.compat.torchvision import import_torchvision

    names = ["bvlc_googlenet"]
    try:
        names += [
            TORCHVISION_PREFIX + n for n in import_torchvision().models.list_models(module=None)
        ]
    except ImportError:
        pass
    return names


def build_model(
    name: str, num_classes: int = 1000, weights: str | os.PathLike | None = None, **kwargs: Any
) -> nn.Module:
    """Builds a model by name, in eval mode.

    Args:
        name: ``"bvlc_googlenet"`` or ``"torchvision:<name>"`` (any ``torchvision.models`` name).
        num_classes: classifier outputs.
        weights: None (random), a local ``.pth`` state_dict path, or (torchvision only) a weights
            enum name such as ``"IMAGENET1K_V1"`` / ``"ResNet50_Weights.IMAGENET1K_V1"``, passed
            through to torchvision (downloads only where the network allows).
        **kwargs: passed to the model constructor (``width=``, ``lrn=`` for bvlc_googlenet;
            ``aux_logits=`` … for torchvision).

    Raises:
        ValueError: unknown name (the message lists the accepted forms).
        FileNotFoundError: a weights path that does not exist.

    Example:
        >>> build_model("bvlc_googlenet", num_classes=10, width=0.25).classifier.out_features
        10
        >>> type(build_model("torchvision:resnet18")).__name__
        'ResNet'
    """
    if name == "bvlc_googlenet":
        if weights is not None and not _is_path(weights):
            raise ValueError(
                f"bvlc_googlenet takes weights as a local .pth path, but got {weights!r}"
            )
        model = bvlc_googlenet(num_classes=num_classes, **kwargs)
        if weights is not None:
            _load_state_dict(model, weights)
        return model.eval()
    if name.startswith(TORCHVISION_PREFIX):
        from deeprebirth.compat.torchvision import import_torchvision

        tv_name = name[len(TORCHVISION_PREFIX) :]
        tv = import_torchvision()
        if tv_name not in tv.models.list_models():
            raise ValueError(
                f"unknown torchvision model {tv_name!r}; see torchvision.models.list_models()"
            )
        from_file = weights is not None and _is_path(weights)
        enum_name = None if weights is None or from_file else str(weights)
        if enum_name is None and tv_name in _INIT_WEIGHTS_MODELS:
            kwargs.setdefault("init_weights", True)
        if enum_name is None or num_classes != 1000:
            kwargs["num_classes"] = num_classes
        model = tv.models.get_model(tv_name, weights=enum_name, **kwargs)
        if from_file:
            _load_state_dict(model, weights)
        return model.eval()
    raise ValueError(f"unknown model {name!r}; expected 'bvlc_googlenet' or 'torchvision:<name>'")
