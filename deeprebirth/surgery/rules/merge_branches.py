"""``merge_branches`` (exact): parallel convolutions reading one input become one ``BranchConv2d``.

E.g. an Inception module's 1x1 convolutions or SqueezeNet's ``expand1x1``/``expand3x3``. The
parent module (the closest common ancestor of the convolutions) is re-traced with torch.fx and
replaced by a GraphModule in which one ``BranchConv2d`` call feeds ``torch.narrow`` views to the
old consumers (the ReLU is fused when every branch is followed by one, and those ReLUs are
removed; with no ReLU after any branch there is none to fuse).

Groups where some branches are followed by a ReLU and others are not (a ResNet block's first
convolution and its downsample) are skipped with the reason: the merged layer could fuse no ReLU,
the ReLU would run out of place on a view (a copy; an in-place write to a view breaks autograd and
becomes a ``slice_scatter`` under ``torch.export``), every reader of a view would copy it, and
``pack_conv`` could no longer fuse the block's ReLUs and residual add. On ResNet-50 the merged
block made every runtime slower (docs/surgery.md).

Convolutions are grouped by what BranchConv2d can share (stride, output size, bias, groups 1,
dilation 1, symmetric zero padding); groups of one are not sites, convolutions the operator cannot
take are skipped with the reason.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from deeprebirth.nn import BranchConv2d
from deeprebirth.surgery.modify import is_new, mark_new
from deeprebirth.surgery.plan import Site
from deeprebirth.surgery.registry import Rule, SiteError, SlimOptions, SurgeryContext, register_rule
from deeprebirth.surgery.trace import trace_module


def _unsupported(conv: nn.Conv2d) -> str:
    problems = []
    if conv.groups != 1:
        problems.append(f"groups={conv.groups}")
    if conv.dilation != (1, 1):
        problems.append(f"dilation={conv.dilation}")
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        problems.append(f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    elif conv.padding[0] != conv.padding[1]:
        problems.append(f"asymmetric padding {conv.padding}")
    if conv.stride[0] != conv.stride[1]:
        problems.append(f"non-square stride {conv.stride}")
    return ", ".join(problems)


def _group_key(conv: nn.Conv2d, out_shape: tuple[int, ...] | None) -> tuple:
    spatial = tuple(out_shape[2:]) if out_shape is not None else None
    return (conv.stride, conv.bias is not None, spatial)


def _common_parent(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if len(common) == min(len(p) for p in parts):  # a path is itself the parent: go one up
        common = common[:-1]
    return ".".join(common)


def _relative(path: str, parent: str) -> str:
    return path[len(parent) + 1 :] if parent else path


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (torch.relu, torch.relu_, torch.nn.functional.relu)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _skip_identities(gm: fx.GraphModule, node: fx.Node) -> None:
    """Removes the ``nn.Identity`` calls that follow ``node`` alone (BatchNorms fold_bn folded):
    exact, and the ReLU after a folded BatchNorm then reads the convolution directly, so that it
    can be fused, or made out of place on a view."""
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op != "call_module" or not isinstance(gm.get_submodule(user.target), nn.Identity):
            return
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)


def _relu_out_of_place(gm: fx.GraphModule, view: fx.Node, drop: bool) -> None:
    """Rewrites the ReLUs reading ``view``: removed when the merged operator already applied it
    (``drop``), otherwise made out-of-place. An in-place ReLU on a ``narrow`` view would break
    autograd when training and becomes a ``slice_scatter`` under ``torch.export``."""
    for user in list(view.users):
        if not _is_relu(gm, user):
            continue
        if drop:
            user.replace_all_uses_with(view)
        else:
            with gm.graph.inserting_before(user):
                user.replace_all_uses_with(gm.graph.call_function(torch.relu, (view,)))
        gm.graph.erase_node(user)


@register_rule
class MergeBranches(Rule):
    """Merges convolutions that read the same tensor into one BranchConv2d call."""

    name = "merge_branches"
    exact = True
    priority = 60

    def find(self, ctx: SurgeryContext) -> list[Site]:
        graph = ctx.graph
        sites = []
        for node in graph.nodes:
            convs = [
                u
                for u in graph.users(node)
                if type(graph.module(u)) is nn.Conv2d and graph.call_counts[u.target] == 1
            ]
            if len(convs) < 2:
                continue
            groups: dict[tuple, list[str]] = {}
            for conv_node in convs:
                conv = graph.module(conv_node)
                problem = _unsupported(conv)
                if problem:
                    sites.append(
                        self.site(
                            (conv_node.target,),
                            f"cannot join a branch group: {problem}",
                            applies=False,
                        )
                    )
                    continue
                stats = ctx.stats.get(conv_node.target)
                groups.setdefault(_group_key(conv, stats.out_shape if stats else None), []).append(
                    conv_node.target
                )
            for key, names in groups.items():
                if len(names) < 2:
                    if len(groups) > 1:  # a sibling reads the same input but cannot share the op
                        stride, bias, spatial = key
                        reason = (
                            f"mismatched shapes: no sibling conv shares its stride {stride}, bias "
                            f"{bias} and output size {spatial}"
                        )
                        sites.append(self.site(tuple(names), reason, applies=False))
                    continue
                parent = _common_parent(names)
                reason = (
                    f"{len(names)} parallel convs -> BranchConv2d in {parent or 'the root module'}"
                )
                sites.append(self.site(tuple(names), reason, parent=parent))
        # rewrite deeper parents first so that re-tracing an ancestor sees the merged child
        return sorted(
            sites,
            key=lambda s: -s.details.get("parent", "").count(".") - bool(s.details.get("parent")),
        )

    def replacements(
        self, model: nn.Module, site: Site, options: SlimOptions
    ) -> dict[str, nn.Module]:
        parent_path = site.details["parent"]
        parent = model.get_submodule(parent_path)
        try:
            gm = trace_module(parent)
        except Exception as error:
            raise SiteError(
                f"torch.fx could not trace {parent_path or 'the root'}: {type(error).__name__}"
            ) from error
        targets = [_relative(p, parent_path) for p in site.modules]
        nodes = []
        for target in targets:
            found = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == target]
            if len(found) != 1:
                raise SiteError(
                    f"{target} is called {len(found)} times in {parent_path or 'the root'}"
                )
            nodes.append(found[0])
        inputs = {n.args[0] for n in nodes if len(n.args) == 1 and not n.kwargs}
        if len(inputs) != 1:
            raise SiteError(
                "the convolutions do not read one shared tensor inside their parent module"
            )
        convs = [gm.get_submodule(t) for t in targets]
        for node in nodes:
            _skip_identities(gm, node)
        followed_by_relu = [len(n.users) == 1 and _is_relu(gm, next(iter(n.users))) for n in nodes]
        if any(followed_by_relu) and not all(followed_by_relu):
            with_relu = [t for t, relu in zip(targets, followed_by_relu, strict=True) if relu]
            raise SiteError(
                f"mixed activations: only {', '.join(with_relu)} is followed by a ReLU, so the "
                "merged layer would fuse none and copy its views (slower; docs/surgery.md)"
            )
        try:
            merged = BranchConv2d.from_convs(convs, relu=all(followed_by_relu))
        except ValueError as error:
            raise SiteError(str(error)) from error
        if any(is_new(c) for c in convs):
            mark_new(merged)
        merged_name = "merged_" + "__".join(t.replace(".", "_") for t in targets)
        gm.add_submodule(merged_name, merged)
        first = min(nodes, key=lambda n: list(gm.graph.nodes).index(n))
        with gm.graph.inserting_before(first):
            merged_node = gm.graph.call_module(merged_name, (next(iter(inputs)),))
            offset = 0
            for node, conv in zip(nodes, convs, strict=True):
                view = gm.graph.call_function(
                    torch.narrow, (merged_node, 1, offset, conv.out_channels)
                )
                offset += conv.out_channels
                node.replace_all_uses_with(view)
                _relu_out_of_place(gm, view, drop=merged.relu)
        for node in nodes:
            gm.graph.erase_node(node)
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        return {parent_path: gm}
