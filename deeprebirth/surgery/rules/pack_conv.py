"""``pack_conv`` (exact): every Conv2d becomes a :class:`PackedConv2d`, fusing the ReLU after it.

A deployment rule for CPU inference, run after the other rules (priority 70): each remaining
``nn.Conv2d`` is replaced by a :class:`~deeprebirth.surgery.modules.PackedConv2d` sharing its
weights, which keeps oneDNN's packed copy of the weights instead of reordering them on every call.
When the convolution's only reader is a ReLU layer called once, that ReLU is fused into the
convolution and replaced by ``nn.Identity`` (a functional or shared ReLU stays where it is).
torchvision's ResNet blocks (``BasicBlock``, ``Bottleneck``) whose BatchNorms were folded become
one :class:`~deeprebirth.surgery.modules.PackedResidualBlock`: their shared ReLU and the residual
add are fused into the packed convolutions as well.
Training, autograd and TorchScript use the plain convolution, so the rewrite is exact everywhere.
Skipped with the reason: padding modes other than zeros and string padding (``"same"``); ResNet
blocks with BatchNorms left (run ``fold_bn`` first) or layers already rewritten are packed layer
by layer instead.
"""

from __future__ import annotations

from torch import nn

from deeprebirth.surgery.modules import PackedConv2d, PackedResidualBlock, packing_problem
from deeprebirth.surgery.plan import Site
from deeprebirth.surgery.registry import Rule, SlimOptions, SurgeryContext, register_rule
from deeprebirth.surgery.rules._chains import called_once, sole_user


@register_rule
class PackConv(Rule):
    """Replaces Conv2d layers by PackedConv2d (weights packed once for oneDNN, ReLU fused)."""

    name = "pack_conv"
    exact = True
    priority = 70

    def find(self, ctx: SurgeryContext) -> list[Site]:
        graph = ctx.graph
        sites, in_blocks = [], set()
        for name, block in ctx.model.named_modules():
            if type(block).__name__ not in RESIDUAL_BLOCKS or not type(block).__module__.startswith(
                "torchvision."
            ):
                continue
            problem = _residual_block_problem(block) or called_once(graph, f"{name}.conv1")
            if problem:
                sites.append(self.site((name,), f"{name} packed layer by layer: {problem}", False))
                continue
            sites.append(self.site((name,), f"pack {name}, fuse its ReLUs and residual add"))
            in_blocks.update(f"{name}.{n}" for n, _ in block.named_modules() if n)
        for node, conv in graph.module_nodes(nn.Conv2d):
            if isinstance(conv, PackedConv2d) or node.target in in_blocks:
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
        return sites

    def replacements(
        self, model: nn.Module, site: Site, options: SlimOptions
    ) -> dict[str, nn.Module]:
        block = model.get_submodule(site.modules[0])
        if type(block).__name__ in RESIDUAL_BLOCKS:
            return {site.modules[0]: _packed_block(block)}
        conv_name, *relu = site.modules
        packed = PackedConv2d.from_conv(model.get_submodule(conv_name), relu=bool(relu))
        return {conv_name: packed, **{name: nn.Identity() for name in relu}}


RESIDUAL_BLOCKS = {"BasicBlock": 2, "Bottleneck": 3}  # torchvision class -> its convolutions


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
