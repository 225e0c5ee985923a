"""``fold_bn`` (exact): conv/linear -> BatchNorm folded into the conv/linear in closed form.

Uses the BatchNorm's running statistics: ``W' = W * g / sqrt(var + eps)``,
``b' = (b - mu) * g / sqrt(var + eps) + beta``. The conv is replaced by a copy with the folded
weights (and a bias), the BatchNorm by ``nn.Identity`` — or, for a norm-act layer such as timm's
``BatchNormAct2d`` (:func:`deeprebirth.surgery.trace.is_norm_act`), by its own ``drop`` and
``act`` modules, which then run on the conv's output. Every BatchNorm layer is a site; skipped
(with the reason): a BatchNorm whose input is not a conv/linear output (pre-activation blocks,
a BatchNorm after a concatenation or a pool), a conv whose output is also read by another layer,
shared (multiply called) layers, BatchNorm without running statistics, channel counts that
differ, linear layers whose output is not ``(N, C)``, and BatchNorm layers the model's traced
forward never calls as a layer.
"""

from __future__ import annotations

import copy

from torch import nn

from deeprebirth.surgery.modify import fold_bn_into
from deeprebirth.surgery.plan import Site
from deeprebirth.surgery.registry import Rule, SlimOptions, SurgeryContext, register_rule
from deeprebirth.surgery.rules._chains import BATCHNORMS, after_norm, called_once, describe

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _problems(
    ctx: SurgeryContext,
    layer_name: str,
    layer: nn.Module,
    bn_name: str,
    bn: nn.Module,
    n_users: int,
) -> list[str]:
    problems = []
    if n_users > 1:
        problems.append(f"{layer_name}'s output is also read by {n_users - 1} other layer(s)")
    shared = called_once(ctx.graph, layer_name, bn_name)
    if shared:
        problems.append(shared)
    if bn.running_mean is None or bn.running_var is None:
        problems.append(f"{bn_name} has no running statistics (track_running_stats=False)")
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if channels != bn.num_features:
        problems.append(
            f"mismatched shapes: {layer_name} has {channels} outputs, {bn_name} normalises {bn.num_features}"
        )
    out_shape = ctx.stats.get(layer_name)
    if (
        isinstance(layer, nn.Linear)
        and out_shape is not None
        and out_shape.out_shape is not None
        and len(out_shape.out_shape) != 2
    ):
        problems.append(f"{layer_name} output {out_shape.out_shape} is not (N, C)")
    return problems


@register_rule
class FoldBatchNorm(Rule):
    """Folds BatchNorm running statistics into the preceding convolution or linear layer."""

    name = "fold_bn"
    exact = True
    priority = 40
    needs_eval_statistics = True

    def find(self, ctx: SurgeryContext) -> list[Site]:
        graph = ctx.graph
        sites = []
        seen: set[str] = set()
        for bn_node, bn in graph.module_nodes(BATCHNORMS):
            if bn_node.target in seen:
                continue  # a shared BatchNorm: one site, skipped by called_once below
            seen.add(bn_node.target)
            sources = [graph.nodes[i] for i in bn_node.inputs]
            layer = graph.module(sources[0]) if len(sources) == 1 else None
            if not isinstance(layer, FOLDABLE):
                source = describe(graph, sources[0]) if sources else "not traced"
                reason = f"input is not a conv/linear output: {bn_node.target} reads {source}"
                sites.append(self.site((bn_node.target,), reason, applies=False))
                continue
            layer_node = sources[0]
            n_users = len(graph.users(layer_node))
            problems = _problems(ctx, layer_node.target, layer, bn_node.target, bn, n_users)
            reason = (
                "; ".join(problems) or f"fold {describe(graph, bn_node)} into {layer_node.target}"
            )
            sites.append(
                self.site((layer_node.target, bn_node.target), reason, applies=not problems)
            )
        for name, module in ctx.model.named_modules():
            if isinstance(module, BATCHNORMS) and name not in seen:
                where = (
                    "the traced forward does not call it as a layer (unused, or inside a layer "
                    "the trace does not enter)"
                    if graph.traced
                    else "the fallback walk of known blocks does not reach it"
                )
                sites.append(self.site((name,), f"not folded: {where}", applies=False))
        return sites

    def replacements(
        self, model: nn.Module, site: Site, options: SlimOptions
    ) -> dict[str, nn.Module]:
        layer_name, bn_name = site.modules
        layer = model.get_submodule(layer_name)
        bn = model.get_submodule(bn_name)
        folded = copy.copy(layer)  # shares nothing that is changed below; the old layer is dropped
        folded._parameters = dict(layer._parameters)
        weight, bias = fold_bn_into(
            layer.weight.detach(), None if layer.bias is None else layer.bias.detach(), bn
        )
        folded.weight = nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
        folded.bias = nn.Parameter(bias, requires_grad=layer.weight.requires_grad)
        return {layer_name: folded, bn_name: after_norm(bn)}
