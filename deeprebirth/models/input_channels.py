"""Changing how many input channels a model built for RGB takes (a grayscale ResNet-18 …).

torchvision's constructors have no channel argument, so :func:`set_input_channels` rebuilds the
stem convolution — the first ``nn.Conv2d`` that reads the 3 RGB channels — with the new count.
Its weights are carried over the way timm's ``adapt_input_conv`` does: summed over RGB for one
channel (a grayscale image is, up to scale, the sum of the colour planes, so pretrained filters
keep their response), tiled and rescaled by ``3 / C`` for more channels.

Example:
    >>> tv = import_torchvision()  # doctest: +SKIP
    >>> gray = set_input_channels(tv.models.resnet18(num_classes=10), 1)  # doctest: +SKIP
    >>> gray(torch.randn(2, 1, 64, 64)).shape  # doctest: +SKIP
    torch.Size([2, 10])
"""

from __future__ import annotations

import math

import torch
from torch import nn


def stem_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """``(name, module)`` of the first ``nn.Conv2d`` (registration order) that reads 3 channels.

    Raises:
        ValueError: the model has no such convolution.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            return name, module
    raise ValueError(
        f"{type(model).__name__} has no nn.Conv2d reading 3 input channels to adapt; build it "
        "with its own channel argument instead"
    )


def adapt_conv_weight(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """An RGB convolution weight ``(O, 3, kH, kW)`` for ``channels`` inputs ``(O, C, kH, kW)``:
    the sum over RGB for C = 1, else the RGB planes tiled and scaled by ``3 / C``."""
    if channels == 1:
        return weight.sum(1, keepdim=True)
    repeats = math.ceil(channels / 3)
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (3 / channels)


@torch.no_grad()
def set_input_channels(model: nn.Module, channels: int) -> nn.Module:
    """Makes ``model`` take ``channels`` input channels by rebuilding its stem convolution
    (:func:`stem_conv`) in place, weights carried over by :func:`adapt_conv_weight`; returns
    ``model``. ``channels == 3`` leaves it unchanged.

    Raises:
        ValueError: ``channels`` < 1, no stem convolution, or a model that transforms its RGB
            input itself (torchvision's GoogLeNet / Inception v3 with ``transform_input``).
    """
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"expected in_channels a positive integer, but got {channels!r}")
    if channels == 3:
        return model
    if getattr(model, "transform_input", False):
        raise ValueError(
            f"{type(model).__name__} normalises RGB input itself (transform_input=True); pass "
            "transform_input=False to give it another channel count"
        )
    name, old = stem_conv(model)
    new = nn.Conv2d(
        channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    if old.weight.device.type != "meta":
        new.weight.copy_(adapt_conv_weight(old.weight, channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
    return model
