"""``pack_conv`` (exact): every Conv2d becomes a :class:`PackedConv2d`, fusing the ReLU after it.

A deployment rule for CPU inference, run after the other rules (priority 70): each remaining
``nn.Conv2d`` is replaced by a :class:`~deeprebirth.surgery.modules.PackedConv2d` sharing its
weights, which keeps oneDNN's packed copy of the weights instead of reordering them on every call.
When the convolution's only reader is a ReLU layer called once, that ReLU is fused into the
convolution and replaced by ``nn.Identity`` (a functional or shared ReLU stays where it is).
Training, autograd and TorchScript use the plain convolution, so the rewrite is exact everywhere.
Skipped with the reason: padding modes other than zeros and string padding (``"same"``).
"""

from __future__ import annotations

from torch import nn

from deeprebirth.surgery.modules import PackedConv2d
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
        sites = []
        for node, conv in graph.module_nodes(nn.Conv2d):
            if isinstance(conv, PackedConv2d):
                continue
            if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                reason = (
                    f"padding_mode={conv.padding_mode!r}, padding={conv.padding!r}: not packable"
                )
                sites.append(self.site((node.target,), reason, applies=False))
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
        conv_name, *relu = site.modules
        packed = PackedConv2d.from_conv(model.get_submodule(conv_name), relu=bool(relu))
        return {conv_name: packed, **{name: nn.Identity() for name in relu}}
