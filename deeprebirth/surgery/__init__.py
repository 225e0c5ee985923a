"""Module surgery: find DeepRebirth patterns in any model, rewrite them, report what changed.

- :func:`plan`: what the rules would rewrite (a :class:`Plan`; ``print(plan)`` is a table).
- :func:`slim`: rewrite a deep copy; returns ``(slim_model, report)``.
- :func:`verify`: max abs/relative output difference of two models.
- :func:`register_rule`: add a user rule (see :mod:`deeprebirth.surgery.registry`).
- :func:`new_parameters`: parameters of layers inexact rules created (train them at 10x LR).
- :func:`flatten_for_inference`: the model as one fx graph without no-op layers (eager speed).

Built-in rules: ``fold_bn``, ``fuse_conv_pool``, ``merge_branches`` and the CPU deployment rule
``pack_conv`` (exact); ``streamline``, ``branch_slim``, ``tucker`` (not exact: finetune
afterwards).

Example:
    >>> model = deeprebirth.models.bvlc_googlenet(width=0.25).eval()
    >>> x = torch.randn(1, 3, 64, 64)
    >>> slim_model, report = deeprebirth.slim(model, ["fuse_conv_pool", "merge_branches"], x)
    >>> deeprebirth.verify(model, slim_model, x).ok
    True
"""

from deeprebirth.surgery.accounting import ModuleStats, profile_modules
from deeprebirth.surgery.flatten import flatten_for_inference
from deeprebirth.surgery.modify import new_parameters
from deeprebirth.surgery.plan import Plan, Site, Totals
from deeprebirth.surgery.registry import (
    Rule,
    SiteError,
    SlimOptions,
    SurgeryContext,
    known_rules,
    register_rule,
)
from deeprebirth.surgery.slim import plan, slim
from deeprebirth.surgery.verify import Verification, verify

__all__ = [
    "ModuleStats",
    "Plan",
    "Rule",
    "Site",
    "SiteError",
    "SlimOptions",
    "SurgeryContext",
    "Totals",
    "Verification",
    "flatten_for_inference",
    "known_rules",
    "new_parameters",
    "plan",
    "profile_modules",
    "register_rule",
    "slim",
    "verify",
]
