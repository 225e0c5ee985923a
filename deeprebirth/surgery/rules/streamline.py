"""``streamline`` (inexact): conv(s1) -> [BN] -> ReLU -> [LRN] -> pool(s2) -> [LRN] becomes one
conv with stride ``s1 * s2`` followed by the kept ReLU; BN, LRN and pool are removed. A norm-act
BatchNorm ending in a ReLU (timm's ``BatchNormAct2d``) stands for BN -> ReLU; its ReLU is kept.

The paper's streamline slimming: GoogLeNet's conv1 (7x7/2 + pool 3/2 -> 7x7/4) and conv2
(3x3/1 + LRN + pool 3/2 -> 3x3/2, its 1x1 reducer stays) blocks, the ResNet stem (7x7/2 + BN +
max 3/2 -> 7x7/4). The new conv keeps kernel size and channels; its padding is chosen (closest
to the old one) so that its output size equals the removed block's output size at the plan's
input size — sites where no padding does are skipped. ``init="xavier"``: Xavier-uniform weights,
zero bias; ``init="inherit"``: the old conv's weights with the BatchNorm folded in. The new conv is
marked as a new layer (``deeprebirth.surgery.new_parameters``).
"""

from __future__ import annotations

from torch import nn

from deeprebirth.surgery.modify import fold_bn_into, init_new_layers, mark_new
from deeprebirth.surgery.plan import Site
from deeprebirth.surgery.registry import Rule, SiteError, SlimOptions, SurgeryContext, register_rule
from deeprebirth.surgery.rules._chains import (
    BATCHNORMS,
    POOLS,
    after_norm,
    called_once,
    norm_ends_in_relu,
    sole_user,
)
from deeprebirth.surgery.trace import GraphNode, ModelGraph


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def matching_padding(
    size: int, kernel: int, stride: int, target: int, preferred: int
) -> int | None:
    """The padding (closest to ``preferred``, at most ``kernel - 1``) making a conv's output
    ``target`` long, or None.

    Example:
        >>> matching_padding(224, 7, 4, 56, 3)
        3
    """
    for padding in sorted(range(kernel), key=lambda p: (abs(p - preferred), p)):
        if _out_size(size, kernel, stride, padding) == target:
            return padding
    return None


def _chain(graph: ModelGraph, conv_node: GraphNode) -> tuple[list[str], list[str], str] | None:
    """``(batchnorms, lrns, pool)`` of a conv -> [BN] -> ReLU -> [LRN] -> pool -> [LRN] chain of
    single-consumer layers, or None when the conv does not start one."""
    bns: list[str] = []
    lrns: list[str] = []
    has_relu, pool = False, ""
    node = conv_node
    while (user := sole_user(graph, node)) is not None:
        module = graph.module(user)
        if pool:
            if isinstance(module, nn.LocalResponseNorm):
                lrns.append(user.target)
            break
        if user.kind == "relu" and not lrns:
            has_relu = True
        elif isinstance(module, BATCHNORMS) and not (bns or has_relu or lrns):
            bns.append(user.target)
            has_relu = norm_ends_in_relu(module)  # a norm-act layer's own ReLU (timm)
        elif isinstance(module, nn.LocalResponseNorm) and has_relu and not lrns:
            lrns.append(user.target)
        elif isinstance(module, POOLS) and has_relu:
            pool = user.target
        else:
            break
        node = user
    return (bns, lrns, pool) if pool else None


@register_rule
class Streamline(Rule):
    """Merges a conv block's pooling (and BN/LRN) into the convolution's stride."""

    name = "streamline"
    exact = False
    priority = 10

    def find(self, ctx: SurgeryContext) -> list[Site]:
        graph = ctx.graph
        sites = []
        for conv_node, conv in graph.module_nodes(nn.Conv2d):
            chain = _chain(graph, conv_node)
            if chain is None:
                continue
            bns, lrns, pool_name = chain
            pool = ctx.model.get_submodule(pool_name)
            removed = bns + lrns + [pool_name]
            modules = (conv_node.target, *removed)
            pool_stride = pool.stride if pool.stride is not None else pool.kernel_size
            pool_stride = (
                (pool_stride, pool_stride) if isinstance(pool_stride, int) else tuple(pool_stride)
            )
            if pool_stride == (1, 1):
                continue  # nothing to streamline: the pool does not downsample
            problem = called_once(graph, *modules)
            if (
                conv.dilation != (1, 1)
                or conv.padding_mode != "zeros"
                or isinstance(conv.padding, str)
            ):
                problem = f"conv has dilation={conv.dilation}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
            in_shape = ctx.stats[conv_node.target].in_shape
            target = ctx.stats[pool_name].out_shape
            stride = (conv.stride[0] * pool_stride[0], conv.stride[1] * pool_stride[1])
            padding = []
            if not problem and (in_shape is None or target is None):
                problem = "the block did not run on the example input"
            if not problem:
                for dim in range(2):
                    p = matching_padding(
                        in_shape[2 + dim],
                        conv.kernel_size[dim],
                        stride[dim],
                        target[2 + dim],
                        conv.padding[dim],
                    )
                    if p is None:
                        problem = (
                            f"no padding makes a {conv.kernel_size}/{stride} conv output {tuple(target[2:])} "
                            f"from {tuple(in_shape[2:])}"
                        )
                        break
                    padding.append(p)
            old = f"{conv.kernel_size[0]}x{conv.kernel_size[1]}/{conv.stride[0]}"
            reason = problem or (
                f"{old} + {' + '.join(type(ctx.model.get_submodule(m)).__name__ for m in removed)} "
                f"-> {conv.kernel_size[0]}x{conv.kernel_size[1]}/{stride[0]} conv"
            )
            sites.append(
                self.site(
                    modules,
                    reason,
                    applies=not problem,
                    stride=list(stride),
                    padding=padding,
                    bn=bns,
                )
            )
        return sites

    def replacements(
        self, model: nn.Module, site: Site, options: SlimOptions
    ) -> dict[str, nn.Module]:
        conv_name, *removed = site.modules
        conv = model.get_submodule(conv_name)
        if not isinstance(conv, nn.Conv2d):
            raise SiteError(f"{conv_name} is no longer an nn.Conv2d")
        new = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=tuple(site.details["stride"]),
            padding=tuple(site.details["padding"]),
            groups=conv.groups,
            bias=True,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        if options.init == "inherit":
            weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
            if site.details["bn"]:
                weight, bias = fold_bn_into(
                    weight, bias, model.get_submodule(site.details["bn"][0])
                )
            new.weight.data.copy_(weight)
            if bias is not None:
                new.bias.data.copy_(bias)
            else:
                nn.init.zeros_(new.bias)
        else:
            init_new_layers(new)
        replacements: dict[str, nn.Module] = {conv_name: mark_new(new)}
        # a norm-act BatchNorm (timm) leaves its ReLU in place, like a separate ReLU layer
        replacements.update({name: after_norm(model.get_submodule(name)) for name in removed})
        return replacements
