"""``branch_slim`` (inexact): the paper's branch slimming of Inception modules.

In each Inception module the lone 1x1 branch and the pool-projection branch (with its pool) are
removed; their output channels go to the 3x3 and 5x5 branches in proportion to those branches'
widths (rounded to ``channel_multiple``, see :func:`slimmed_widths`), so the module's output width
(and every later layer) is unchanged. The 3x3/5x5 reducer
1x1 convolutions are narrowed by ``reduce_factor`` (default 0.5, see SlimOptions). New layers are
Xavier-initialised (``init="xavier"``, the paper) or copy the overlapping block of the old
weights (``init="inherit"``), and are marked as new layers.

Supported: deeprebirth's bvlc_googlenet ``Inception`` (rebuilt with widths 0 for the removed
branches) and torchvision's GoogLeNet ``Inception`` (replaced by a two-branch
:class:`~deeprebirth.nn.ConcatBranches` of the same ``BasicConv2d`` blocks). Other
Inception variants (torchvision Inception-v3's InceptionA-E) are listed as skipped.
"""

from __future__ import annotations

from torch import nn

from deeprebirth.models import Inception as BVLCInception
from deeprebirth.nn import ConcatBranches
from deeprebirth.surgery.modify import inherit_state, init_new_layers, mark_new
from deeprebirth.surgery.plan import Site
from deeprebirth.surgery.registry import Rule, SiteError, SlimOptions, SurgeryContext, register_rule


def slimmed_widths(
    ch1x1: int, ch3x3: int, ch5x5: int, pool_proj: int, multiple: int = 1
) -> tuple[int, int]:
    """New 3x3 and 5x5 branch widths: the removed branches' channels split proportionally.

    With ``multiple`` > 1, and a module width that is a multiple of it (at least two), the 3x3
    width is rounded to the nearest multiple, so both widths are multiples: kernels that work in
    blocks of 16 channels (oneDNN, OpenVINO, XNNPACK on AVX-512) then pad no block. Other widths
    keep the exact split. The multiply-accumulates change by a fraction of a percent.

    Example:
        >>> slimmed_widths(64, 128, 32, 32)   # inception_3a: 256 channels in, 256 out
        (205, 51)
        >>> slimmed_widths(64, 128, 32, 32, multiple=16)
        (208, 48)
    """
    total = ch1x1 + ch3x3 + ch5x5 + pool_proj
    new3 = ch3x3 + round((ch1x1 + pool_proj) * ch3x3 / (ch3x3 + ch5x5))
    new3 = min(max(new3, 1), total - 1)
    if multiple > 1 and total % multiple == 0 and total >= 2 * multiple:
        new3 = min(max(round(new3 / multiple) * multiple, multiple), total - multiple)
    return new3, total - new3


def _narrow(width: int, factor: float) -> int:
    return max(1, round(width * factor))


def _is_torchvision_inception(module: nn.Module) -> bool:
    if not all(hasattr(module, f"branch{i}") for i in range(1, 5)):
        return False
    try:
        return (
            hasattr(module.branch1, "conv")
            and all(
                isinstance(module.get_submodule(f"branch{i}"), nn.Sequential) for i in (2, 3, 4)
            )
            and len(module.branch2) == 2
            and len(module.branch3) == 2
            and isinstance(module.branch4[0], nn.MaxPool2d)
        )
    except (AttributeError, TypeError):
        return False


def _bvlc_replacement(module: BVLCInception, options: SlimOptions) -> nn.Module:
    ch1x1, r3, ch3x3, r5, ch5x5, pool_proj = module.widths
    new3, new5 = slimmed_widths(ch1x1, ch3x3, ch5x5, pool_proj, options.channel_multiple)
    in_channels = module.conv_3x3_reduce.in_channels
    factor = options.reduce_factor
    new = BVLCInception(in_channels, 0, _narrow(r3, factor), new3, _narrow(r5, factor), new5, 0)
    new = new.to(device=module.conv_3x3.weight.device, dtype=module.conv_3x3.weight.dtype)
    init_new_layers(new)
    if options.init == "inherit":
        inherit_state(new, module)
    return new


def _basic(block: nn.Module, in_channels: int, out_channels: int) -> nn.Module:
    conv = block.conv
    return type(block)(
        in_channels,
        out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
    )


def _torchvision_replacement(module: nn.Module, options: SlimOptions) -> nn.Module:
    reduce3, conv3 = module.branch2
    reduce5, conv5 = module.branch3
    widths = [module.branch1.conv.out_channels, conv3.conv.out_channels, conv5.conv.out_channels,
              module.branch4[1].conv.out_channels]  # fmt: skip
    new3, new5 = slimmed_widths(*widths, options.channel_multiple)
    in_channels = reduce3.conv.in_channels
    r3, r5 = (_narrow(b.conv.out_channels, options.reduce_factor) for b in (reduce3, reduce5))
    new = ConcatBranches(
        [
            nn.Sequential(_basic(reduce3, in_channels, r3), _basic(conv3, r3, new3)),
            nn.Sequential(_basic(reduce5, in_channels, r5), _basic(conv5, r5, new5)),
        ]
    ).to(device=conv3.conv.weight.device, dtype=conv3.conv.weight.dtype)
    init_new_layers(new)
    if options.init == "inherit":
        inherit_state(new.branches[0], module.branch2)
        inherit_state(new.branches[1], module.branch3)
    return new


@register_rule
class BranchSlim(Rule):
    """Removes the 1x1 and pool-projection branches of Inception modules (width kept)."""

    name = "branch_slim"
    exact = False
    priority = 20

    def find(self, ctx: SurgeryContext) -> list[Site]:
        sites = []
        for name, module in ctx.model.named_modules():
            if isinstance(module, BVLCInception):
                ch1x1, r3, ch3x3, r5, ch5x5, pool_proj = module.widths
                if not (ch1x1 or pool_proj):
                    continue  # already slim
                if not (module.conv_3x3 is not None and module.conv_5x5 is not None):
                    sites.append(
                        self.site((name,), "needs both a 3x3 and a 5x5 branch", applies=False)
                    )
                    continue
                new3, new5 = slimmed_widths(
                    ch1x1, ch3x3, ch5x5, pool_proj, ctx.options.channel_multiple
                )
                r3n, r5n = (
                    _narrow(r3, ctx.options.reduce_factor),
                    _narrow(r5, ctx.options.reduce_factor),
                )
            elif _is_torchvision_inception(module):
                widths = [module.branch1.conv.out_channels, module.branch2[1].conv.out_channels,
                          module.branch3[1].conv.out_channels, module.branch4[1].conv.out_channels]  # fmt: skip
                new3, new5 = slimmed_widths(*widths, ctx.options.channel_multiple)
                r3, r5 = module.branch2[0].conv.out_channels, module.branch3[0].conv.out_channels
                r3n, r5n = (
                    _narrow(r3, ctx.options.reduce_factor),
                    _narrow(r5, ctx.options.reduce_factor),
                )
                ch3x3, ch5x5 = widths[1], widths[2]
            else:
                if type(module).__name__.startswith("Inception") and name:
                    sites.append(
                        self.site(
                            (name,),
                            f"{type(module).__name__}: branch layout not supported "
                            "(GoogLeNet Inception modules only)",
                            applies=False,
                        )  # fmt: skip
                    )
                continue
            reason = (
                f"3x3 {r3}->{ch3x3} becomes {r3n}->{new3}, 5x5 {r5}->{ch5x5} becomes {r5n}->{new5}; "
                "1x1 and pool branches removed"
            )
            sites.append(self.site((name,), reason, widths_3x3=[r3n, new3], widths_5x5=[r5n, new5]))
        return sites

    def replacements(
        self, model: nn.Module, site: Site, options: SlimOptions
    ) -> dict[str, nn.Module]:
        name = site.modules[0]
        module = model.get_submodule(name)
        if isinstance(module, BVLCInception):
            new = _bvlc_replacement(module, options)
        elif _is_torchvision_inception(module):
            new = _torchvision_replacement(module, options)
        else:
            raise SiteError(f"{name} is no longer an Inception module")
        return {name: mark_new(new)}
