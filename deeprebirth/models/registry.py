"""Models by name: ``build_model("bvlc_googlenet")``, ``build_model("torchvision:resnet50")``,
``build_model("timm:efficientnet_b0")``.

Every model built here carries its rebuild recipe (:mod:`deeprebirth.models.recipe`), so a model
file needs only the name, the arguments and the weights. torchvision is imported only through
:func:`deeprebirth.compat.torchvision.import_torchvision`, and timm (optional) only through
:func:`deeprebirth.compat.timm.import_timm`, when a ``timm:`` name is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprebirth.models.bvlc_googlenet import bvlc_googlenet
from deeprebirth.models.input_channels import set_input_channels
from deeprebirth.models.recipe import registered_model, set_recipe, source_recipe

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
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
    """Names :func:`build_model` accepts (torchvision's and timm's lists need those packages)."""
    from deeprebirth.compat.timm import import_timm
    from deeprebirth.compat.torchvision import import_torchvision

    names = ["bvlc_googlenet"]
    try:
        names += [
            TORCHVISION_PREFIX + n for n in import_torchvision().models.list_models(module=None)
        ]
    except ImportError:
        pass
    try:
        names += [TIMM_PREFIX + n for n in import_timm().list_models()]
    except ImportError:
        pass
    return names


def build_model(
    name: str,
    num_classes: int = 1000,
    weights: str | os.PathLike | None = None,
    *,
    rebuilding: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Builds a model by name, in eval mode.

    Args:
        name: ``"bvlc_googlenet"``, ``"torchvision:<name>"`` (any ``torchvision.models`` name)
            or ``"timm:<name>"`` (any ``timm.list_models()`` name; needs the optional timm
            package, see :func:`deeprebirth.compat.timm.import_timm`).
        num_classes: classifier outputs.
        weights: None (random), a local ``.pth`` state_dict path, or (torchvision only) a weights
            enum name such as ``"IMAGENET1K_V1"`` / ``"ResNet50_Weights.IMAGENET1K_V1"``, passed
            through to torchvision (downloads only where the network allows).
        rebuilding: building the architecture of a model file (its weights follow): skips
            initialisations that only cost time.
        **kwargs: passed to the model constructor (``width=``, ``lrn=``, ``in_channels=`` for
            bvlc_googlenet; ``aux_logits=`` … for torchvision; ``drop_rate=``, ``in_chans=`` …
            for timm, where ``in_channels=`` is accepted for ``in_chans=``). Names registered
            with :func:`deeprebirth.models.register_model` are built by their builder.

    Raises:
        ValueError: unknown name (the message lists the accepted forms).
        ImportError: a ``timm:`` name without timm installed (the message says how to install it).
        FileNotFoundError: a weights path that does not exist.

    Example:
        >>> build_model("bvlc_googlenet", num_classes=10, width=0.25).classifier.out_features
        10
        >>> type(build_model("torchvision:resnet18")).__name__
        'ResNet'
        >>> build_model("timm:mobilenetv3_large_100", num_classes=10).classifier.out_features
        10
    """
    if name == "bvlc_googlenet":
        if weights is not None and not _is_path(weights):
            raise ValueError(
                f"bvlc_googlenet takes weights as a local .pth path, but got {weights!r}"
            )
        model = bvlc_googlenet(num_classes=num_classes, **kwargs)
    elif name.startswith(TORCHVISION_PREFIX):
        return _torchvision_model(name, num_classes, weights, rebuilding, kwargs)
    elif name.startswith(TIMM_PREFIX):
        return _timm_model(name, num_classes, weights, kwargs)
    elif registered_model(name) is not None:
        model = registered_model(name)(num_classes=num_classes, **kwargs)
        set_recipe(model, source_recipe(name, num_classes, kwargs))
    else:
        raise ValueError(
            f"unknown model {name!r}; expected 'bvlc_googlenet', 'torchvision:<name>', "
            "'timm:<name>' or a name registered with deeprebirth.models.register_model"
        )
    if weights is not None:
        _load_state_dict(model, weights)
    return model.eval()


def _torchvision_model(
    name: str,
    num_classes: int,
    weights: str | os.PathLike | None,
    rebuilding: bool,
    kwargs: dict[str, Any],
) -> nn.Module:
    from deeprebirth.compat.torchvision import import_torchvision

    tv_name = name[len(TORCHVISION_PREFIX) :]
    tv = import_torchvision()
    if tv_name not in tv.models.list_models():
        raise ValueError(
            f"unknown torchvision model {tv_name!r}; see torchvision.models.list_models()"
        )
    from_file = weights is not None and _is_path(weights)
    enum_name = None if weights is None or from_file else str(weights)
    build_kwargs = dict(kwargs)
    if enum_name is None and tv_name in _INIT_WEIGHTS_MODELS:
        build_kwargs.setdefault("init_weights", not rebuilding)
    if enum_name is None or num_classes != 1000:
        build_kwargs["num_classes"] = num_classes
    channels = build_kwargs.pop("in_channels", 3)  # torchvision has no channel argument
    model = tv.models.get_model(tv_name, weights=enum_name, **build_kwargs)
    set_input_channels(model, channels)
    if from_file:
        _load_state_dict(model, weights)
    recorded = {k: v for k, v in kwargs.items() if k != "init_weights"}
    # Pretrained weights make torchvision change constructor arguments (GoogLeNet / Inception v3
    # drop their auxiliary heads and normalise inputs); the rebuilt architecture must match.
    for attribute in ("aux_logits", "transform_input"):
        if hasattr(model, attribute):
            recorded[attribute] = bool(getattr(model, attribute))
    return set_recipe(model.eval(), source_recipe(name, num_classes, recorded))


def _timm_model(
    name: str, num_classes: int, weights: str | os.PathLike | None, kwargs: dict[str, Any]
) -> nn.Module:
    from deeprebirth.compat.timm import import_timm

    timm_name = name[len(TIMM_PREFIX) :]
    if weights is not None and not _is_path(weights):
        raise ValueError(
            f"timm models take weights as a local .pth state_dict path, but got {weights!r} "
            "(deeprebirth does not download timm's pretrained weights)"
        )
    timm = import_timm()
    if not timm.is_model(timm_name):
        raise ValueError(
            f"unknown timm model {timm_name!r}; list the names with timm.list_models() "
            "(e.g. timm.list_models('resnet*')) or deeprebirth.models.available_models()"
        )
    if "pretrained" in kwargs:
        raise ValueError(
            "timm models take no pretrained= argument here: pass weights= a local .pth state_dict"
        )
    build_kwargs = dict(kwargs)
    if "in_channels" in build_kwargs:
        if "in_chans" in build_kwargs:
            raise ValueError(
                "pass the input channels once: in_channels= or timm's in_chans=, not both"
            )
        build_kwargs["in_chans"] = build_kwargs.pop("in_channels")
    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **build_kwargs)
    if weights is not None:
        _load_state_dict(model, weights)
    return set_recipe(model.eval(), source_recipe(name, num_classes, kwargs))
