"""Optimizers and LR schedules of the finetune job: new layers at ``new_layer_lr_mult`` x LR.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> groups = param_groups(model, {"1.weight", "1.bias"}, lr=0.01, new_lr_mult=10.0)
    >>> [(g["name"], g["lr"], len(g["params"])) for g in groups]
    [('new', 0.1, 2), ('old', 0.01, 2)]
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def param_groups(
    model: nn.Module,
    new_names: Iterable[str],
    lr: float,
    new_lr_mult: float,
    train_old: bool = True,
) -> list[dict]:
    """Optimizer parameter groups: ``new`` (names in ``new_names``) at ``lr * new_lr_mult`` and
    ``old`` (every other parameter that requires grad) at ``lr``, or frozen when not ``train_old``.

    Frozen parameters get ``requires_grad = False``; empty groups are left out.
    """
    new_names = set(new_names)
    new, old = [], []
    for name, param in model.named_parameters():
        if name in new_names:
            param.requires_grad_(True)
            new.append(param)
        elif train_old:
            param.requires_grad_(True)
            old.append(param)
        else:
            param.requires_grad_(False)
    groups = [
        {"name": "new", "params": new, "lr": lr * new_lr_mult},
        {"name": "old", "params": old, "lr": lr},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    groups: list[dict], name: str, momentum: float, weight_decay: float, nesterov: bool = False
) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over ``groups`` (each group keeps its own ``lr``)."""
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=groups[0]["lr"],
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov and momentum > 0,
        )
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    raise ValueError(f"optimizer.name: expected 'sgd' or 'adamw', but got {name!r}")


def lr_factor(
    step: int, total: int, name: str, warmup: int = 0, step_size: int = 1, gamma: float = 0.1
) -> float:
    """The LR multiplier at ``step`` of ``total``: linear warm-up then cosine / step / constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if name == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if name == "step":
        return gamma ** (step // max(1, step_size))
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total: int,
    name: str,
    warmup: int = 0,
    step_size: int = 1,
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor` (its state_dict resumes exactly)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, name, warmup, step_size, gamma)
    )
