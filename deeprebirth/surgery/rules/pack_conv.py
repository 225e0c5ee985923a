"""``pack_conv`` (exact): every Conv2d becomes a :class:`PackedConv2d`, fusing the ReLU after it.

A deployment rule for CPU inference, run after the other rules (priority 70): each remaining
``nn.Conv2d`` is replaced by a :class:`~deeprebirth.nn.PackedConv2d` sharing its
weights, which keeps oneDNN's packed copy of the weights instead of reordering them on every call.
When the convolution's only reader is a ReLU layer called once, that ReLU is fused into the
convolution and replaced by ``nn.Identity`` (a functional or shared ReLU stays where it is).
A :class:`~deeprebirth.nn.BranchConv2d` whose branches share one window (``merge_branches``'s
merged Inception 1x1 layers) becomes one PackedConv2d of its concatenated weights, its ReLU fused
(:meth:`~deeprebirth.nn.BranchConv2d.as_conv`): ``branch_conv`` concatenates or reorders the
weights on every call (docs/kernels.md, "Packed convolutions"); branches of different windows
stay one ``branch_conv``.
torchvision's ResNet blocks (``BasicBlock``, ``Bottleneck``) whose BatchNorms were folded become
one :class:`~deeprebirth.nn.PackedResidualBlock`: their shared ReLU and the residual
add are fused into the packed convolutions as well, and a ``nn.Sequential`` of such blocks (a
ResNet stage) becomes a :class:`~deeprebirth.nn.PackedResidualStage`, whose blocks
write their outputs over their inputs.
Each ``nn.Linear`` becomes an :class:`~deeprebirth.nn.InferenceLinear` sharing its parameters,
which splits its output features across the intra-op threads (ATen runs a classifier's product
for a few rows on one thread; docs/kernels.md, "Linear layers across threads"): values within a
matrix product's rounding.
Training, autograd and TorchScript use the plain convolution, so the rewrite is exact everywhere.
Skipped with the reason: padding modes other than zeros and string padding (``"same"``); ResNet
blocks with BatchNorms left (run ``fold_bn`` first) or layers already rewritten are packed layer
by layer instead.
"""

from __future__ import annotations

from torch import nn

from deeprebirth.nn import (
    BranchConv2d,
    InferenceLinear,
    PackedConv2d,
    PackedResidualBlock,
    PackedResidualStage,
)
from deeprebirth.nn.packed_conv import packing_problem
from deeprebirth.surgery.plan import Site
from deeprebirth.surgery.registry import Rule, SlimOptions, SurgeryContext, register_rule
from deeprebirth.surgery.rules._chains import called_once, sole_user
from deeprebirth.surgery.trace import ModelGraph


@register_rule
class PackConv(Rule):
    """Replaces Conv2d layers by PackedConv2d (weights packed once for oneDNN, ReLU fused)."""

    name = "pack_conv"
    exact = True
    priority = 70

    def find(self, ctx: SurgeryContext) -> list[Site]:
        graph = ctx.graph
        sites, handled = self._residual_sites(ctx)
        for relu_name, convs in _shared_relu_groups(graph, handled).items():
            reason = (
                f"pack {', '.join(convs)}; fuse their shared ReLU {relu_name} (each of its "
                f"{len(convs)} calls follows one of them)"
            )
            sites.append(self.site((*convs, relu_name), reason))
            handled.update(convs)
        sites.extend(self._branch_sites(graph))
        for node, conv in graph.module_nodes(nn.Conv2d):
            if isinstance(conv, PackedConv2d) or node.target in handled:
                continue
            problem = packing_problem(conv)
            if problem:
                sites.append(self.site((node.target,), problem, applies=False))
                continue
            user = sole_user(graph, node)
            relu_module = graph.module(user) if user is not None and user.kind == "relu" else None
            shared = called_once(graph, node.target, user.target) if relu_module else ""
            if shared:
                modules, reason = (node.target,), f"pack {node.target}; ReLU not fused: {shared}"
            elif relu_module is not None:
                modules = (node.target, user.target)
                reason = f"pack {node.target}, fuse {user.target} (ReLU)"
            else:
                modules, reason = (node.target,), f"pack {node.target}"
            sites.append(self.site(modules, reason))
        linears = {
            node.target for node, layer in graph.module_nodes(nn.Linear) if type(layer) is nn.Linear
        }
        for target in sorted(linears):
            reason = f"run {target} with its output features split across the threads"
            sites.append(self.site((target,), reason))
        return sites

    def _branch_sites(self, graph: ModelGraph) -> list[Site]:
        """Sites for the BranchConv2d layers: packed as one convolution where the branches share
        one window, skipped with the reason otherwise."""
        sites = []
        merged_layers = {node.target: merged for node, merged in graph.module_nodes(BranchConv2d)}
        for target, merged in merged_layers.items():
            conv = merged.as_conv()
            problem = (
                "its branches' windows differ (kernel sizes "
                f"{[tuple(w.shape[2:]) for w in merged.weights]}, paddings {merged.paddings})"
                if conv is None
                else packing_problem(conv)
            )
            if problem:
                sites.append(
                    self.site((target,), f"{target} stays a branch_conv: {problem}", False)
                )
                continue
            relu = ", its ReLU fused" if merged.relu else ""
            reason = (
                f"pack {target} as one convolution of its {len(merged.out_channels)} branches' "
                f"weights{relu}"
            )
            sites.append(self.site((target,), reason))
        return sites

    def _residual_sites(self, ctx: SurgeryContext) -> tuple[list[Site], set[str]]:
        """Sites for torchvision ResNet stages and blocks, and the module names they cover."""
        graph = ctx.graph
        sites, covered = [], set()
        problems = {  # torchvision ResNet block name -> why it cannot be packed whole ('' if it can)
            name: _residual_block_problem(block) or called_once(graph, f"{name}.conv1")
            for name, block in ctx.model.named_modules()
            if _is_residual_block(block)
        }
        stages = _packable_stages(ctx.model, problems)
        for name in stages:
            count = len(ctx.model.get_submodule(name))
            sites.append(
                self.site(
                    (name,),
                    f"pack {name} ({count} blocks), fuse their ReLUs and residual adds; "
                    "each block's output written over its input",
                )
            )
        for name, problem in problems.items():
            if problem:
                sites.append(self.site((name,), f"{name} packed layer by layer: {problem}", False))
                continue
            if _parent(name) not in stages:
                sites.append(self.site((name,), f"pack {name}, fuse its ReLUs and residual add"))
            block = ctx.model.get_submodule(name)
            covered.update(f"{name}.{n}" for n, _ in block.named_modules() if n)
        return sites, covered

    def replacements(
        self, model: nn.Module, site: Site, options: SlimOptions
    ) -> dict[str, nn.Module]:
        block = model.get_submodule(site.modules[0])
        if type(block) is nn.Linear:
            return {site.modules[0]: InferenceLinear.from_linear(block)}
        if isinstance(block, BranchConv2d):
            packed = PackedConv2d.from_conv(block.as_conv(), relu=block.relu)
            return {site.modules[0]: packed.train(block.training)}
        if _is_residual_block(block):
            return {site.modules[0]: _packed_block(block)}
        if isinstance(block, nn.Sequential):  # a stage of residual blocks
            stage = PackedResidualStage(*(_packed_block(b) for b in block))
            return {site.modules[0]: stage.train(block.training)}
        # one or more convolutions, then the ReLU module fused into all of them (if any)
        *convs, last = site.modules
        relu = isinstance(model.get_submodule(last), nn.ReLU)
        convs = convs if relu else [*convs, last]
        packed = {
            name: PackedConv2d.from_conv(model.get_submodule(name), relu=relu) for name in convs
        }
        return {**packed, **({last: nn.Identity()} if relu else {})}


RESIDUAL_BLOCKS = {"BasicBlock": 2, "Bottleneck": 3}  # torchvision class -> its convolutions


def _shared_relu_groups(graph: ModelGraph, handled: set[str]) -> dict[str, list[str]]:
    """ReLU module name -> the convolutions it can be fused into, for ReLU modules called more
    than once (e.g. bvlc_googlenet's Inception modules share one) where every call reads a
    packable Conv2d, called once, whose only reader is that call."""
    calls: dict[str, list] = {}
    for node in graph.nodes:
        if node.kind == "relu" and isinstance(graph.module(node), nn.ReLU):
            calls.setdefault(node.target, []).append(node)
    groups = {}
    for relu_name, relu_calls in calls.items():
        if len(relu_calls) < 2 or graph.call_counts.get(relu_name) != len(relu_calls):
            continue
        convs = []
        for call in relu_calls:
            source = graph.nodes[call.inputs[0]] if len(call.inputs) == 1 else None
            conv = graph.module(source) if source is not None else None
            if (
                type(conv) is not nn.Conv2d
                or packing_problem(conv)
                or source.target in handled
                or called_once(graph, source.target)
                or sole_user(graph, source) is not call
            ):
                break
            convs.append(source.target)
        else:
            groups[relu_name] = convs
    return groups


def _is_residual_block(module: nn.Module) -> bool:
    kind = type(module)
    return kind.__name__ in RESIDUAL_BLOCKS and kind.__module__.startswith("torchvision.")


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _packable_stages(model: nn.Module, problems: dict[str, str]) -> list[str]:
    """Names of the ``nn.Sequential`` submodules whose children are all packable residual
    blocks (the model itself excluded: a rule replaces submodules)."""
    stages = []
    for name, module in model.named_modules():
        children = [f"{name}.{child}" for child, _ in module.named_children()]
        if (
            name
            and type(module) is nn.Sequential
            and children
            and all(problems.get(child, "not a block") == "" for child in children)
        ):
            stages.append(name)
    return stages


def _packable(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and not packing_problem(conv)


def _shortcut_conv(block: nn.Module) -> nn.Module | None:
    """The downsample's only layer left after BatchNorm folding (None without a downsample)."""
    if block.downsample is None:
        return None
    layers = [m for m in block.downsample.children() if not isinstance(m, nn.Identity)]
    return layers[0] if len(layers) == 1 else block.downsample


def _residual_block_problem(block: nn.Module) -> str:
    """'' when a torchvision ResNet block can become a PackedResidualBlock, else why not."""
    convs, norms = _block_layers(block, "conv"), _block_layers(block, "bn")
    if not all(isinstance(n, nn.Identity) for n in norms):
        return "its BatchNorms are not folded (run fold_bn first)"
    if not all(_packable(c) for c in convs):
        return "a convolution was rewritten or is not packable"
    if not isinstance(getattr(block, "relu", None), nn.ReLU):
        return "its activation is not nn.ReLU"
    shortcut = _shortcut_conv(block)
    if shortcut is not None and not _packable(shortcut):
        return "its downsample is not one packable convolution"
    return ""


def _block_layers(block: nn.Module, prefix: str) -> list[nn.Module | None]:
    """The block's ``conv1, conv2[, conv3]`` (prefix "conv") or ``bn1 …`` (prefix "bn")."""
    count = RESIDUAL_BLOCKS[type(block).__name__]
    return [getattr(block, f"{prefix}{i}", None) for i in range(1, count + 1)]


def _packed_block(block: nn.Module) -> PackedResidualBlock:
    convs = _block_layers(block, "conv")
    return PackedResidualBlock(convs, _shortcut_conv(block)).train(block.training)
