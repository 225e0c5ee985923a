"""Rebuild recipes: how a model's architecture was made, as plain data.

A deeprebirth model file carries no code. It holds a *recipe* — the source model (a name that
:func:`deeprebirth.models.build_model` accepts, or one registered with :func:`register_model`,
and its arguments) followed by the surgery steps applied to it (``deeprebirth.slim`` rules with
their options and input shape, ``flatten_for_inference``) — plus the weights as tensors.
Loading replays the recipe on a freshly built model and then loads the weights into it.

The recipe travels on the model as a JSON string attribute, so ``copy.deepcopy`` keeps it and
every surgery step appends to the copy it returns, together with a signature of the architecture
it describes (module types and weight shapes): a model changed by hand afterwards no longer
matches, and :func:`get_recipe` then returns None instead of a recipe that would rebuild
something else. A model built by hand has none; give it one with :func:`set_recipe`, or load its
weights into an instance you build (``template=``).

Example:
    >>> model = build_model("bvlc_googlenet", num_classes=10, width=0.25)
    >>> get_recipe(model)["source"]["name"]
    'bvlc_googlenet'
    >>> rebuilt = rebuild(get_recipe(model))  # same architecture, fresh weights
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

RECIPE_ATTR = "_deeprebirth_recipe"
SIGNATURE_ATTR = "_deeprebirth_recipe_signature"
RECIPE_VERSION = 1
STEP_KINDS = ("slim", "flatten")

_USER_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Makes ``build_model(name, num_classes=..., **kwargs)`` call ``builder`` in this process.

    Model files of such a model load in any process that registered the same name first: the
    file names the builder, it never contains it.

    Raises:
        ValueError: ``name`` is empty, contains ``:`` (reserved for ``torchvision:`` and
            ``timm:``), is ``bvlc_googlenet``, or is registered to another builder.
    """
    if not isinstance(name, str) or not name or ":" in name or name == "bvlc_googlenet":
        raise ValueError(
            f"expected name to be a non-empty string without ':' other than 'bvlc_googlenet', "
            f"but got {name!r}"
        )
    if not callable(builder):
        raise ValueError(f"expected builder to be callable, but got {builder!r}")
    existing = _USER_MODELS.get(name)
    if existing is not None and existing is not builder:
        raise ValueError(f"model name {name!r} is already registered to {existing!r}")
    _USER_MODELS[name] = builder


def registered_model(name: str) -> Callable[..., nn.Module] | None:
    """The builder :func:`register_model` registered under ``name``, or None."""
    return _USER_MODELS.get(name)


def plain_data(value: Any, where: str) -> Any:
    """``value`` as JSON data (tuples become lists); raises ValueError naming ``where``."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where} must be plain JSON data, but {error}") from error


def source_recipe(name: str, num_classes: int, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe of a model just built by ``build_model(name, num_classes, **kwargs)``."""
    source = {"name": name, "num_classes": int(num_classes), "kwargs": dict(kwargs)}
    return {"version": RECIPE_VERSION, "source": plain_data(source, "model arguments"), "steps": []}


def architecture_signature(model: nn.Module) -> str:
    """A hash of ``model``'s module types (by path) and weight names and shapes."""
    digest = hashlib.sha1()
    for name, module in model.named_modules():
        digest.update(f"{name}:{type(module).__module__}.{type(module).__qualname__};".encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    return digest.hexdigest()


def get_recipe(model: nn.Module) -> dict[str, Any] | None:
    """The recipe of ``model`` (a fresh copy), or None if it was built or changed by hand."""
    text = getattr(model, RECIPE_ATTR, None)
    if not isinstance(text, str):
        return None
    if getattr(model, SIGNATURE_ATTR, None) != architecture_signature(model):
        return None
    return json.loads(text)


def set_recipe(model: nn.Module, recipe: Mapping[str, Any] | None) -> nn.Module:
    """Attaches ``recipe`` (None removes it) to ``model``; returns ``model``.

    Raises:
        ValueError: the recipe is not plain data or lacks ``source`` / ``steps``.
    """
    if recipe is None:
        for attribute in (RECIPE_ATTR, SIGNATURE_ATTR):
            if hasattr(model, attribute):
                delattr(model, attribute)
        return model
    check_recipe(recipe)
    # str attributes: TorchScript, torch.export and fx ignore or keep them without typing issues.
    object.__setattr__(model, RECIPE_ATTR, json.dumps(plain_data(dict(recipe), "recipe")))
    object.__setattr__(model, SIGNATURE_ATTR, architecture_signature(model))
    return model


def with_step(source: nn.Module, result: nn.Module, step: Mapping[str, Any]) -> nn.Module:
    """Gives ``result`` the recipe of ``source`` plus ``step`` (nothing if ``source`` has none).

    Returns:
        ``result``.
    """
    recipe = get_recipe(source)
    if recipe is None:
        return set_recipe(result, None)
    recipe["steps"].append(plain_data(dict(step), f"{step.get('kind')} step"))
    return set_recipe(result, recipe)


def check_recipe(recipe: Any) -> None:
    """Raises ValueError naming what is wrong when ``recipe`` is not a well-formed recipe."""
    if not isinstance(recipe, Mapping):
        raise ValueError(f"expected a recipe dict, but got {type(recipe).__name__}")
    if recipe.get("version") != RECIPE_VERSION:
        raise ValueError(
            f"recipe version {recipe.get('version')!r} is not supported "
            f"(this deeprebirth reads version {RECIPE_VERSION})"
        )
    source = recipe.get("source")
    if not isinstance(source, Mapping) or not isinstance(source.get("name"), str):
        raise ValueError("recipe: 'source' must be a dict with a model 'name'")
    if not isinstance(source.get("kwargs", {}), Mapping):
        raise ValueError("recipe: 'source.kwargs' must be a dict")
    steps = recipe.get("steps")
    if not isinstance(steps, list):
        raise ValueError("recipe: 'steps' must be a list")
    for index, step in enumerate(steps):
        if not isinstance(step, Mapping) or step.get("kind") not in STEP_KINDS:
            raise ValueError(f"recipe: steps[{index}] must be a dict with kind in {STEP_KINDS}")


def _replay(model: nn.Module, step: Mapping[str, Any]) -> nn.Module:
    import deeprebirth

    if step["kind"] == "flatten":
        return deeprebirth.surgery.flatten_for_inference(model.eval())
    shape = tuple(int(s) for s in step["input_shape"])
    options = dict(step["options"])
    # Files written before branch_slim rounded its widths split them exactly: rebuild those.
    options.setdefault("channel_multiple", 1)
    slim_model, _ = deeprebirth.slim(model, list(step["rules"]), shape, **options)
    return slim_model


def rebuild(recipe: Mapping[str, Any]) -> nn.Module:
    """The architecture ``recipe`` describes, with fresh weights (load yours into it).

    The global random state is left as it was: building and replaying draw from a forked one.

    Raises:
        ValueError: a malformed recipe, or a model or rule name this process does not know.
    """
    from deeprebirth.models.registry import build_model

    check_recipe(recipe)
    source = recipe["source"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(
            source["name"],
            num_classes=int(source.get("num_classes", 1000)),
            rebuilding=True,
            **dict(source.get("kwargs", {})),
        )
        training = model.training
        for step in recipe["steps"]:
            model = _replay(model, step)
    model.train(training)
    return set_recipe(model, copy.deepcopy(dict(recipe)))
