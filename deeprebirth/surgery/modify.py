"""Editing a model in place: replacing submodules, marking new layers, initialising them.

New layers created by inexact rules carry ``_deeprebirth_new = True``; :func:`new_parameters`
collects their parameters so a trainer can give them a higher learning rate (the paper uses 10x).
The mark survives ``copy.deepcopy``, pickling (``deeprebirth.io.save_model``) and later exact
rewrites of the same layer (a marked conv that ``fold_bn`` or ``fuse_conv_pool`` replaces passes
the mark on).
"""

from __future__ import annotations

import torch
from torch import nn

NEW_MARK = "_deeprebirth_new"


def mark_new(module: nn.Module) -> nn.Module:
    """Marks ``module`` and all its descendants as new layers; returns it."""
    for sub in module.modules():
        setattr(sub, NEW_MARK, True)
    return module


def is_new(module: nn.Module) -> bool:
    """Whether :func:`mark_new` marked this module."""
    return bool(getattr(module, NEW_MARK, False))


def new_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters of the layers that inexact rules created, by qualified name.

    Example:
        >>> slim_model, report = deeprebirth.slim(model, ["streamline"], example)  # doctest: +SKIP
        >>> fast = list(new_parameters(slim_model).values())                      # doctest: +SKIP
        >>> ids = {id(p) for p in fast}
        >>> rest = [p for p in slim_model.parameters() if id(p) not in ids]
        >>> optim = torch.optim.SGD([{"params": rest}, {"params": fast, "lr": 10 * lr}], lr=lr)
    """
    found: dict[str, nn.Parameter] = {}
    for name, module in model.named_modules():
        if is_new(module):
            for pname, param in module.named_parameters(recurse=False):
                found[f"{name}.{pname}" if name else pname] = param
    return found


def replace_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Puts ``new`` at ``path`` (``""`` replaces the root); returns the (possibly new) root.

    A non-Identity replacement of a marked module inherits the mark.
    """
    old = model.get_submodule(path)
    if is_new(old) and not isinstance(new, nn.Identity):
        setattr(new, NEW_MARK, True)
    if path == "":
        return new
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    return model


def apply_replacements(model: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """Applies ``{path: new module}``; returns the (possibly new) root."""
    for path, new in replacements.items():
        model = replace_module(model, path, new)
    return model


def init_new_layers(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every conv/linear in ``module`` (the paper's
    initialisation of regenerated layers); BatchNorm layers reset to identity statistics."""
    for sub in module.modules():
        if isinstance(sub, (nn.modules.conv._ConvNd, nn.Linear)):
            nn.init.xavier_uniform_(sub.weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.reset_parameters()


def copy_overlap(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copies the overlapping leading block of ``src`` into ``dst`` (``init="inherit"``)."""
    if dst.dim() != src.dim():
        return
    region = tuple(slice(0, min(a, b)) for a, b in zip(dst.shape, src.shape, strict=True))
    with torch.no_grad():
        dst[region] = src[region].to(dst.dtype)


def inherit_state(dst: nn.Module, src: nn.Module) -> None:
    """Copies every parameter/buffer of ``src`` into ``dst`` where names match, overlapping blocks
    only (shapes may differ)."""
    src_state = src.state_dict()
    for name, tensor in dst.state_dict().items():
        if name in src_state and tensor.is_floating_point():
            copy_overlap(tensor, src_state[name])


def fold_bn_into(
    weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds BatchNorm's running statistics into a preceding conv/linear (computed in float64).

    ``W' = W * g / sqrt(var + eps)``, ``b' = (b - mu) * g / sqrt(var + eps) + beta``, with
    ``g = 1, beta = 0`` when the BatchNorm has no affine parameters. ``weight``'s dim 0 is the
    output channel.
    """
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    b = bias.double() if bias is not None else torch.zeros_like(var)
    new_bias = (b - mean) * scale + beta
    # one rounding of W * scale in the weight's dtype: as exact as computing it in float64
    new_weight = weight * scale.to(weight.dtype).reshape(-1, *([1] * (weight.dim() - 1)))
    return new_weight, new_bias.to(weight.dtype)
