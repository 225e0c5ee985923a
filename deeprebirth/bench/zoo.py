"""The models the benchmark compares: originals by name and deeprebirth's slimmed variants.

A :class:`ModelSpec` names a model (``deeprebirth.models.build_model``) and the slimming rules
applied to it; :func:`build_variant` builds it with random weights (latency, memory and MACs do
not depend on the weights) and slims it at the benchmark's input size (``streamline`` picks
paddings for that size). Labels follow the paper's tables (GoogLeNet-Slim, -Tucker, …).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

EXACT_RULES = ("fold_bn", "fuse_conv_pool", "merge_branches")
SLIM_RULES = ("streamline", "branch_slim", *EXACT_RULES)
DEPLOY_RULES = (*EXACT_RULES, "pack_conv")  # deeprebirth's own deployed path
FORMS = ("model", "deployed", "portable")


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: ``label`` in tables, ``source`` for ``build_model``, the slimming
    ``rules`` applied (empty: the original), constructor ``kwargs``, and the ``form`` it runs in:
    ``"model"`` as the rules leave it; ``"deployed"`` with deeprebirth's exact deployment rules
    (:data:`DEPLOY_RULES`) on top and flattened (``flatten_for_inference``), the path of
    deeprebirth's own operators; ``"portable"`` with the exact rules, then standard operators
    only (``make_portable``), what the other runtimes are given."""

    label: str
    source: str
    rules: tuple[str, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    form: str = "model"


def in_form(spec: ModelSpec, form: str) -> ModelSpec:
    """``spec`` in another :data:`FORMS` entry, labelled ``"<label> [form]"``.

    Example:
        >>> in_form(RESNET50, "deployed").label
        'ResNet-50 [deployed]'
    """
    if form not in FORMS:
        raise ValueError(f"expected form to be one of {FORMS}, but got {form!r}")
    return replace(spec, label=f"{spec.label} [{form}]", form=form)


GOOGLENET = ModelSpec("GoogLeNet", "bvlc_googlenet")
GOOGLENET_SLIM = ModelSpec("GoogLeNet-Slim", "bvlc_googlenet", SLIM_RULES)
GOOGLENET_TUCKER = ModelSpec("GoogLeNet-Tucker", "bvlc_googlenet", ("tucker",))
GOOGLENET_SLIM_TUCKER = ModelSpec(
    "GoogLeNet-Slim-Tucker", "bvlc_googlenet", ("streamline", "branch_slim", "tucker", *EXACT_RULES)
)
TV_GOOGLENET = ModelSpec(
    "GoogLeNet (torchvision)", "torchvision:googlenet", kwargs={"aux_logits": False}
)
ALEXNET = ModelSpec("AlexNet", "torchvision:alexnet")
RESNET50 = ModelSpec("ResNet-50", "torchvision:resnet50")
RESNET50_SLIM = ModelSpec(
    "ResNet-50-Slim", "torchvision:resnet50", ("streamline", "fold_bn", "fuse_conv_pool")
)
RESNET152 = ModelSpec("ResNet-152", "torchvision:resnet152")
SQUEEZENET = ModelSpec("SqueezeNet 1.1", "torchvision:squeezenet1_1")
MOBILENET_V2 = ModelSpec("MobileNetV2", "torchvision:mobilenet_v2")

# The paper's tables, on this machine.
NON_TENSOR_SHARE_MODELS = [ALEXNET, GOOGLENET, TV_GOOGLENET, RESNET50, RESNET152]  # Table 1
LAYER_TIME_MODELS = [GOOGLENET, RESNET50]  # Figure 2
LATENCY_MODELS = [  # Tables 4/5 and 6
    GOOGLENET,
    GOOGLENET_SLIM,
    GOOGLENET_TUCKER,
    GOOGLENET_SLIM_TUCKER,
    SQUEEZENET,
    MOBILENET_V2,
]
PEER_PAIRS = [(GOOGLENET, GOOGLENET_SLIM), (RESNET50, RESNET50_SLIM)]  # original vs slim
DEPLOYED_MODELS = [GOOGLENET_SLIM, RESNET50]  # deeprebirth's deployed path vs every runtime


def build_variant(spec: ModelSpec, image_size: int, **overrides: Any) -> nn.Module:
    """The model of ``spec`` in eval mode, slimmed with its rules at ``image_size``.

    ``overrides`` are passed to the constructor on top of ``spec.kwargs`` (e.g. ``width=0.25``
    for a small bvlc_googlenet in tests).

    Example:
        >>> build_variant(GOOGLENET_SLIM, 64, width=0.125).conv1  # doctest: +ELLIPSIS
        Sequential(...)
    """
    import deeprebirth
    from deeprebirth.models import build_model

    model = build_model(spec.source, **{**spec.kwargs, **overrides}).eval()
    rules = {
        "model": spec.rules,
        "deployed": (*spec.rules, *DEPLOY_RULES),
        "portable": (*spec.rules, *EXACT_RULES),
    }[spec.form]
    if rules:
        example = torch.zeros(1, 3, image_size, image_size)
        model, _ = deeprebirth.slim(model, list(dict.fromkeys(rules)), example)
    if spec.form == "deployed":  # a deployed model's weights stay: packed once, never compared
        deployed = deeprebirth.surgery.flatten_for_inference(model.eval())
        deeprebirth.nn.freeze_packed_weights(deployed)
        return deployed
    if spec.form == "portable":
        return deeprebirth.export.make_portable(model).eval()
    return model.eval()


def top_level_blocks(model: nn.Module) -> list[str]:
    """Names of the model's top-level children, the paper's per-block rows (``conv1``, ``conv2``,
    ``inception_3a`` …); Dropout, Flatten and Identity (no work at inference) are left out."""
    return [
        name
        for name, child in model.named_children()
        if not isinstance(child, (nn.Dropout, nn.Flatten, nn.Identity))
    ]
