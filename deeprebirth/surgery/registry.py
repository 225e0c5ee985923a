"""The rule contract and the registry of rules (``@register_rule``).

A rule is a class with a unique ``name``, an ``exact`` flag and two methods:

- ``find(ctx) -> list[Site]``: every site it matches in ``ctx.model`` (using ``ctx.graph`` for data
  flow and ``ctx.stats`` for shapes), with ``applies=False`` and a ``reason`` where it cannot apply.
- ``replacements(model, site, options) -> {module path: new module}``: the rewrite of one site,
  computed on the current model right before it is applied (``nn.Identity()`` removes a layer).
  Raise :class:`SiteError` to skip the site with a reason instead.

Rules run in ``priority`` order (lower first; structural inexact rules 10-30, exact rules 40-60,
the deployment rule ``pack_conv`` 70, user rules default to 50); each rule sees the model as the previous rules left it.

Example:
    >>> @register_rule
    ... class DropDropout(Rule):
    ...     name, exact = "drop_dropout", True
    ...     def find(self, ctx):
    ...         return [Site(self.name, (n,), True, reason="eval no-op")
    ...                 for n, m in ctx.model.named_modules() if isinstance(m, nn.Dropout)]
    ...     def replacements(self, model, site, options):
    ...         return {site.modules[0]: nn.Identity()}
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from torch import nn

from deeprebirth.surgery.accounting import ModuleStats
from deeprebirth.surgery.plan import Site
from deeprebirth.surgery.trace import ModelGraph

INIT_CHOICES = ("xavier", "inherit")


class SiteError(ValueError):
    """Raised by ``Rule.replacements`` when a site turns out not to be rewritable."""


@dataclass
class SlimOptions:
    """Options shared by all rules.

    Attributes:
        init: ``"xavier"`` (the paper: new layers Xavier-initialised, zero bias) or ``"inherit"``
            (copy the old weights where shapes allow, BatchNorm folded in).
        allow_train_mode: let ``fold_bn`` fold the running statistics of a model in training mode.
        reduce_factor: ``branch_slim`` multiplies the 3x3/5x5 reducer widths by this (default 0.5:
            our choice, the paper narrows the reducers without one global factor).
        channel_multiple: ``branch_slim`` rounds the new 3x3 and 5x5 widths to multiples of this
            where the module's width is one (default 16, the float32 vector width of AVX-512 and
            the channel block of oneDNN's and OpenVINO's layouts; 1 splits exactly in
            proportion). See :func:`~deeprebirth.surgery.rules.branch_slim.slimmed_widths`.
        tucker_ratio: ``tucker`` keeps this fraction of input/output channels as ranks.
        tucker_energy: if set, ``tucker`` keeps the smallest ranks holding this fraction of each
            unfolding's squared singular values (overrides ``tucker_ratio``).
        tucker_min_channels: ``tucker`` skips convolutions narrower than this.
        tucker_ranks: ``{conv path: [rank_in, rank_out]}`` overriding the rank choice (model
            files record the ranks chosen on the trained weights here).
        extra: options of user rules.
    """

    init: str = "xavier"
    allow_train_mode: bool = False
    reduce_factor: float = 0.5
    channel_multiple: int = 16
    tucker_ratio: float = 0.5
    tucker_energy: float | None = None
    tucker_min_channels: int = 32
    tucker_ranks: dict[str, list[int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.init not in INIT_CHOICES:
            raise ValueError(f"expected init to be one of {INIT_CHOICES}, but got {self.init!r}")
        if not 0 < self.reduce_factor <= 1:
            raise ValueError(f"expected 0 < reduce_factor <= 1, but got {self.reduce_factor}")
        if isinstance(self.channel_multiple, bool) or not isinstance(self.channel_multiple, int):
            raise ValueError(
                f"expected channel_multiple to be an int, but got {self.channel_multiple!r}"
            )
        if self.channel_multiple < 1:
            raise ValueError(f"expected channel_multiple >= 1, but got {self.channel_multiple}")
        if not 0 < self.tucker_ratio <= 1:
            raise ValueError(f"expected 0 < tucker_ratio <= 1, but got {self.tucker_ratio}")
        if self.tucker_energy is not None and not 0 < self.tucker_energy <= 1:
            raise ValueError(f"expected 0 < tucker_energy <= 1, but got {self.tucker_energy}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the options."""
        return asdict(self)


@dataclass
class SurgeryContext:
    """What a rule's ``find`` sees: the current model, its data flow and its shapes."""

    model: nn.Module
    graph: ModelGraph
    stats: dict[str, ModuleStats]
    options: SlimOptions


class Rule:
    """Base class of slimming rules; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    priority: ClassVar[int] = 50
    needs_eval_statistics: ClassVar[bool] = False

    def find(self, ctx: SurgeryContext) -> list[Site]:
        """Every site this rule matches in ``ctx.model``."""
        raise NotImplementedError

    def replacements(
        self, model: nn.Module, site: Site, options: SlimOptions
    ) -> dict[str, nn.Module]:
        """``{module path: new module}`` rewriting ``site`` (raise SiteError to skip it)."""
        raise NotImplementedError

    def site(
        self, modules: Sequence[str], reason: str = "", applies: bool = True, **details: Any
    ) -> Site:
        """A :class:`Site` of this rule."""
        return Site(self.name, tuple(modules), self.exact, applies, reason, details=dict(details))


_RULES: dict[str, type[Rule]] = {}


def register_rule(rule: type[Rule]) -> type[Rule]:
    """Class decorator adding a rule to the registry under ``rule.name``; returns the class.

    Raises:
        TypeError: not a class with a name, an exact flag, ``find`` and ``replacements``.
        ValueError: the name is taken by a different class.
    """
    if not isinstance(rule, type) or not all(
        callable(getattr(rule, m, None)) for m in ("find", "replacements")
    ):
        raise TypeError(f"expected a rule class with find() and replacements(), but got {rule!r}")
    if not isinstance(getattr(rule, "name", None), str) or not rule.name:
        raise TypeError(f"rule class {rule.__name__} needs a non-empty string `name`")
    if not isinstance(getattr(rule, "exact", None), bool):
        raise TypeError(f"rule class {rule.__name__} needs a bool `exact` flag")
    existing = _RULES.get(rule.name)
    if existing is not None and existing.__qualname__ != rule.__qualname__:
        raise ValueError(
            f"rule name {rule.name!r} is already registered by {existing.__qualname__}"
        )
    _RULES[rule.name] = rule
    return rule


def _load_builtin_rules() -> None:
    importlib.import_module("deeprebirth.surgery.rules")  # registers every file in rules/


def known_rules() -> list[str]:
    """Names of every registered rule (built-in and user)."""
    _load_builtin_rules()
    return sorted(_RULES)


def resolve_rules(rules: str | Sequence[str | Rule | type[Rule]]) -> list[Rule]:
    """Rule instances for names (``"fold_bn,streamline"`` or a list), sorted by priority.

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    _load_builtin_rules()
    if isinstance(rules, str):
        rules = [r.strip() for r in rules.split(",") if r.strip()]
    resolved: list[Rule] = []
    for rule in rules:
        if isinstance(rule, Rule):
            resolved.append(rule)
        elif isinstance(rule, type) and issubclass(rule, Rule):
            resolved.append(rule())
        elif isinstance(rule, str) and rule in _RULES:
            resolved.append(_RULES[rule]())
        else:
            raise ValueError(f"unknown rule {rule!r}; known rules: {', '.join(sorted(_RULES))}")
    names = [r.name for r in resolved]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"rules listed more than once: {', '.join(duplicates)}")
    return sorted(resolved, key=lambda r: r.priority)
