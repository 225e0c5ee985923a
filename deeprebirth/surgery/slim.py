"""``plan`` (what would change) and ``slim`` (change it, on a deep copy).

Both run the same driver: deep-copy the model, put it in eval mode, then for each rule in priority
order build its data-flow graph and shapes, let the rule find sites, and rewrite every applicable
site (accounting params/MACs/activation bytes of the replaced modules before and after). ``plan``
discards the rewritten copy; ``slim`` returns it in the original's train/eval mode.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deeprebirth.surgery.accounting import ModuleStats, module_cost, profile_modules
from deeprebirth.surgery.modify import apply_replacements
from deeprebirth.surgery.plan import Plan, Site, Totals
from deeprebirth.surgery.registry import Rule, SiteError, SlimOptions, SurgeryContext, resolve_rules
from deeprebirth.surgery.trace import build_graph

RulesArg = str | Sequence[str | Rule | type[Rule]]
DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


def _example_tensor(
    model: nn.Module, example: torch.Tensor | tuple[int, ...] | None
) -> torch.Tensor:
    if isinstance(example, torch.Tensor):
        return example
    shape = tuple(example) if example is not None else DEFAULT_INPUT_SHAPE
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    return torch.zeros(shape, dtype=dtype, device=param.device if param is not None else "cpu")


def _totals(stats: dict[str, ModuleStats]) -> Totals:
    root = stats[""]
    return Totals(root.params, root.macs, root.act_bytes)


def _account(
    site: Site,
    replacements: dict[str, nn.Module],
    stats: dict[str, ModuleStats],
    dtype: torch.dtype,
) -> None:
    for path, new in replacements.items():
        old = stats.get(path, ModuleStats())
        after = module_cost(new, old.in_shape, dtype)
        site.params_before += old.params
        site.macs_before += old.macs
        site.act_bytes_before += old.act_bytes
        site.params_after += after.params
        site.macs_after += after.macs
        site.act_bytes_after += after.act_bytes


def _check_mode(model: nn.Module, rules: list[Rule], options: SlimOptions) -> None:
    needs_eval = [r.name for r in rules if r.needs_eval_statistics]
    if needs_eval and model.training and not options.allow_train_mode:
        raise ValueError(
            f"rules {', '.join(needs_eval)} fold BatchNorm running statistics, but the model is in "
            "training mode (its statistics may still be moving); call model.eval() first or pass "
            "allow_train_mode=True"
        )


def run_rules(
    model: nn.Module, example: torch.Tensor, rules: list[Rule], options: SlimOptions
) -> tuple[nn.Module, Plan]:
    """The driver shared by :func:`plan` and :func:`slim`: rewrites a deep copy, returns it and the
    plan of what was done."""
    _check_mode(model, rules, options)
    work = copy.deepcopy(model)
    was_training = work.training
    work.eval()
    dtype = example.dtype
    stats = profile_modules(work, example)
    before = _totals(stats)
    sites: list[Site] = []
    notes: list[str] = []
    traced = True
    for index, rule in enumerate(rules):
        if index:
            stats = profile_modules(work, example)
        graph = build_graph(work)
        if not graph.traced:
            traced = False
            if graph.note not in notes:
                notes.append(graph.note)
        for site in rule.find(SurgeryContext(work, graph, stats, options)):
            if site.applies:
                try:
                    replacements = rule.replacements(work, site, options)
                except SiteError as error:
                    site.applies, site.reason = False, str(error)
                else:
                    _account(site, replacements, stats, dtype)
                    work = apply_replacements(work, replacements)
            sites.append(site)
    after = _totals(profile_modules(work, example))
    work.train(was_training)
    result = Plan(
        rules=[r.name for r in rules],
        sites=sites,
        input_shape=tuple(example.shape),
        options=options.to_dict(),
        traced=traced,
        notes=notes,
        before=before,
        after=after,
        model_name=type(model).__name__,
    )
    return work, result


def _record_step(model: nn.Module, slim_model: nn.Module, report: Plan) -> None:
    """Appends this call to the slim model's rebuild recipe (deeprebirth.models.recipe)."""
    from deeprebirth.models.recipe import set_recipe, with_step

    options = dict(report.options)
    # Ranks chosen from the trained weights (tucker_energy) must not be chosen again on the
    # fresh weights of a rebuilt model.
    chosen = {s.modules[0]: s.details["ranks"] for s in report.applied if "ranks" in s.details}
    if chosen:
        options["tucker_ranks"] = {**options.get("tucker_ranks", {}), **chosen}
    step = {
        "kind": "slim",
        "rules": list(report.rules),
        "input_shape": list(report.input_shape),
        "options": options,
    }
    try:
        with_step(model, slim_model, step)
    except ValueError as error:
        set_recipe(slim_model, None)
        warnings.warn(
            f"the slim model has no rebuild recipe ({error}); save it with "
            "deeprebirth.io.save_model(..., recipe=...) or load its weights into a template",
            UserWarning,
            stacklevel=3,
        )


def plan(
    model: nn.Module,
    example_input: torch.Tensor | tuple[int, ...] | None = None,
    rules: RulesArg = ("fold_bn", "fuse_conv_pool", "merge_branches"),
    **options: Any,
) -> Plan:
    """Finds every site the rules match and what rewriting them would change; ``model`` is untouched.

    Args:
        model: any ``nn.Module`` (traced with torch.fx; known block types are walked if it does
            not trace, with a warning and ``plan.traced == False``).
        example_input: a tensor or a shape (default ``(1, 3, 224, 224)``); shapes, MACs and
            activation bytes are computed at this size, and ``streamline`` picks paddings for it.
        rules: names (list or comma-separated string) or Rule instances; they run in priority
            order (structural ``streamline``/``branch_slim``/``tucker`` first, then the exact ones).
        **options: fields of :class:`SlimOptions` (``init``, ``allow_train_mode``, ``reduce_factor``,
            ``tucker_ratio``, ``tucker_energy`` …).

    Returns:
        A :class:`Plan`; ``print(plan)`` shows a table, ``plan.to_dict()`` is JSON-ready. A model
        with nothing to slim gives an empty plan.

    Raises:
        ValueError: unknown rule names (the message lists the known ones), bad options, or a model
            in training mode with ``fold_bn`` and no ``allow_train_mode=True``.

    Example:
        >>> model = deeprebirth.models.bvlc_googlenet(width=0.25).eval()
        >>> p = deeprebirth.plan(model, torch.zeros(1, 3, 64, 64), rules="fuse_conv_pool")
        >>> [s.modules for s in p.applied]
        [('conv1.conv', 'conv1.pool')]
    """
    resolved = resolve_rules(rules)
    opts = SlimOptions(**options)
    return run_rules(model, _example_tensor(model, example_input), resolved, opts)[1]


def slim(
    model: nn.Module,
    plan_or_rules: Plan | RulesArg = ("fold_bn", "fuse_conv_pool", "merge_branches"),
    example_input: torch.Tensor | tuple[int, ...] | None = None,
    init: str | None = None,
    **options: Any,
) -> tuple[nn.Module, Plan]:
    """Applies a plan (or rules) to a deep copy of ``model``; returns ``(slim_model, report)``.

    Args:
        model: the trained model; it is not modified.
        plan_or_rules: a :class:`Plan` from :func:`plan` (its rules, options and input shape are
            reused) or rules as for :func:`plan`.
        example_input: tensor or shape; defaults to the plan's input shape, else (1, 3, 224, 224).
        init: ``"xavier"`` (default, the paper) or ``"inherit"`` for new layers of inexact rules;
            overrides the plan's option.
        **options: :class:`SlimOptions` fields, overriding the plan's.

    Returns:
        The slimmed model (same train/eval mode as ``model``; new layers marked for
        :func:`deeprebirth.surgery.new_parameters`) and the report: a :class:`Plan` of what was
        applied and skipped.

    Example:
        >>> slim_model, report = deeprebirth.slim(model, ["streamline", "branch_slim"],
        ...                                       torch.zeros(1, 3, 64, 64))  # doctest: +SKIP
    """
    if isinstance(plan_or_rules, Plan):
        merged = {k: v for k, v in plan_or_rules.options.items()}
        merged.update(options)
        rules: RulesArg = plan_or_rules.rules
        example = example_input if example_input is not None else plan_or_rules.input_shape
    else:
        merged, rules, example = dict(options), plan_or_rules, example_input
    if init is not None:
        merged["init"] = init
    opts = SlimOptions(**merged)
    slim_model, report = run_rules(
        model, _example_tensor(model, example), resolve_rules(rules), opts
    )
    _record_step(model, slim_model, report)
    if isinstance(plan_or_rules, Plan):
        planned = [(s.rule, s.modules, s.applies) for s in plan_or_rules.sites]
        done = [(s.rule, s.modules, s.applies) for s in report.sites]
        if planned != done:
            warnings.warn(
                f"slim found {len(report.applied)} applicable sites where the plan had "
                f"{len(plan_or_rules.applied)}: the model differs from the planned one; the report "
                "lists what was actually done",
                UserWarning,
                stacklevel=2,
            )
    return slim_model, report
