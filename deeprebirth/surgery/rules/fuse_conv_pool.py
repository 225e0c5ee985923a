"""``fuse_conv_pool`` (exact): conv -> [ReLU] -> max/avg pool becomes one ``ConvPool2d``.

The conv is replaced by ``deeprebirth.nn.ConvPool2d.from_modules`` (ReLU fused when the chain
has one), the pool by ``nn.Identity``, and so is a ReLU module of the chain that the model calls
only there (ConvPool2d applies it; counted by torch.fx: in a model fx cannot trace, every ReLU
stays). A ReLU function, or a ReLU module called elsewhere too, is kept and now runs on the pooled
output, where it changes nothing
(``relu(pool(relu(y))) == pool(relu(y))``). Skipped with the
reason: a BatchNorm or LRN between conv and pool (run ``fold_bn`` first), a conv/ReLU output that
other layers also read, shared layers, settings ConvPool2d cannot express (padding modes, pool
dilation or indices, ``count_include_pad=False``, ``divisor_override``).
"""

from __future__ import annotations

from torch import nn

from deeprebirth.nn import ConvPool2d
from deeprebirth.surgery.plan import Site
from deeprebirth.surgery.registry import Rule, SiteError, SlimOptions, SurgeryContext, register_rule
from deeprebirth.surgery.rules._chains import BATCHNORMS, POOLS, called_once, describe


@register_rule
class FuseConvPool(Rule):
    """Fuses convolution, optional ReLU and the following pooling layer into ConvPool2d."""

    name = "fuse_conv_pool"
    exact = True
    priority = 50

    def find(self, ctx: SurgeryContext) -> list[Site]:
        graph = ctx.graph
        sites = []
        for conv_node, _ in graph.module_nodes(nn.Conv2d):
            node, relu, problem = conv_node, False, ""
            relu_modules = []  # the chain's ReLU modules (not functions)
            while True:
                users = graph.users(node)
                pools = [u for u in users if isinstance(graph.module(u), POOLS)]
                if len(users) > 1:
                    if pools:
                        problem = f"the pool's input ({describe(graph, node)}) is also read by {len(users) - 1} other layer(s)"
                    break
                if not users:
                    break
                user = users[0]
                module = graph.module(user)
                if user.kind == "relu":
                    relu, node = True, user
                    if module is not None:
                        relu_modules.append(user.target)
                    continue
                if isinstance(module, BATCHNORMS):
                    pool_follows = any(
                        isinstance(graph.module(u), POOLS) for u in graph.users(user)
                    ) or any(
                        isinstance(graph.module(v), POOLS)
                        for u in graph.users(user)
                        for v in graph.users(u)
                    )
                    if pool_follows:
                        problem = f"{describe(graph, user)} lies between conv and pool (run fold_bn first)"
                        pools = [user]
                    break
                if isinstance(module, nn.LocalResponseNorm):
                    if any(isinstance(graph.module(u), POOLS) for u in graph.users(user)):
                        problem = f"{describe(graph, user)} lies between conv and pool"
                        pools = [user]
                    break
                if isinstance(module, POOLS):
                    pools = [user]
                break
            if not pools:
                continue
            pool_node = pools[0]
            if not problem:
                problem = called_once(graph, conv_node.target, pool_node.target)
            if not problem:
                try:
                    ConvPool2d.from_modules(
                        graph.module(conv_node), graph.module(pool_node), relu=relu
                    )
                except ValueError as error:
                    problem = str(error)
            reason = (
                problem
                or f"{'conv+relu' if relu else 'conv'}+{type(graph.module(pool_node)).__name__} -> ConvPool2d"
            )
            # a ReLU module called only here runs nothing ConvPool2d has not: it goes too. Only
            # where fx counted the calls (a walked graph assumes one call per module, and ReLU
            # modules are often shared)
            spare = [n for n in relu_modules if graph.traced and not called_once(graph, n)]
            sites.append(
                self.site(
                    (conv_node.target, pool_node.target),
                    reason,
                    applies=not problem,
                    relu=relu,
                    relu_modules=spare,
                )
            )
        return sites

    def replacements(
        self, model: nn.Module, site: Site, options: SlimOptions
    ) -> dict[str, nn.Module]:
        conv_name, pool_name = site.modules
        try:
            fused = ConvPool2d.from_modules(
                model.get_submodule(conv_name),
                model.get_submodule(pool_name),
                relu=site.details["relu"],
            )
        except ValueError as error:
            raise SiteError(str(error)) from error
        spare_relus = {name: nn.Identity() for name in site.details.get("relu_modules", [])}
        return {conv_name: fused, pool_name: nn.Identity(), **spare_relus}
