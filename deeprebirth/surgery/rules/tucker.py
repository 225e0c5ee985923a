"""``tucker`` (inexact, optional): Tucker-2 decomposition of a kxk convolution.

``conv(C_in -> C_out, kxk)`` becomes ``1x1 (C_in -> R_in) -> kxk core (R_in -> R_out, the old
stride/padding/dilation) -> 1x1 (R_out -> C_out, the old bias)``, computed by HOSVD: the leading
left singular vectors (``torch.linalg.svd``) of the weight's output- and input-channel unfoldings,
and the core ``W x_0 U_out^T x_1 U_in^T``. Ranks: ``tucker_ratio`` of the channels, or, with
``tucker_energy``, the fewest singular values holding that fraction of the squared spectrum. The
compression the paper combines with slimming (GoogLeNet-Slim-Tucker). Skipped: 1x1 or grouped
convolutions, layers narrower than ``tucker_min_channels``, and ranks that would not save MACs.
The three new layers are marked as new (they start from the decomposition whatever ``init`` is).
"""

from __future__ import annotations

import torch
from torch import nn

from deeprebirth.surgery.modify import mark_new
from deeprebirth.surgery.plan import Site
from deeprebirth.surgery.registry import Rule, SiteError, SlimOptions, SurgeryContext, register_rule
from deeprebirth.surgery.rules._chains import called_once


def _rank(singular_values: torch.Tensor, channels: int, options: SlimOptions) -> int:
    if options.tucker_energy is not None:
        energy = singular_values.double() ** 2
        cumulative = torch.cumsum(energy, 0) / energy.sum()
        return (
            int(
                torch.searchsorted(
                    cumulative, torch.tensor(options.tucker_energy, dtype=cumulative.dtype)
                ).item()
            )
            + 1
        )
    return max(1, round(channels * options.tucker_ratio))


def tucker2_factors(
    weight: torch.Tensor, options: SlimOptions, ranks: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U_out (C_out, R_out), core (R_out, R_in, kh, kw), U_in (C_in, R_in))`` of a conv weight.

    ``weight ~= einsum('or,rskl,is->oikl', U_out, core, U_in)``; exact when ranks are full.

    Args:
        weight: ``(C_out, C_in, kh, kw)``.
        options: ``tucker_energy`` / ``tucker_ratio`` choose the ranks.
        ranks: ``[R_in, R_out]`` to use instead (a rebuilt model keeps the ranks chosen on the
            trained weights).
    """
    c_out, c_in = weight.shape[:2]
    w = weight.detach().double()
    u_out, s_out, _ = torch.linalg.svd(w.reshape(c_out, -1), full_matrices=False)
    u_in, s_in, _ = torch.linalg.svd(w.transpose(0, 1).reshape(c_in, -1), full_matrices=False)
    if ranks is None:
        ranks = [_rank(s_in, c_in, options), _rank(s_out, c_out, options)]
    r_in, r_out = min(int(ranks[0]), u_in.shape[1]), min(int(ranks[1]), u_out.shape[1])
    u_out, u_in = u_out[:, :r_out], u_in[:, :r_in]
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    return u_out, core, u_in


@register_rule
class Tucker(Rule):
    """Tucker-2 decomposes kxk convolutions into 1x1 -> kxk core -> 1x1."""

    name = "tucker"
    exact = False
    priority = 30

    def find(self, ctx: SurgeryContext) -> list[Site]:
        sites = []
        for node, conv in ctx.graph.module_nodes(nn.Conv2d):
            if conv.kernel_size == (1, 1):
                continue
            problem = called_once(ctx.graph, node.target)
            if conv.groups != 1:
                problem = f"groups={conv.groups} (grouped convolutions are not decomposed)"
            elif min(conv.in_channels, conv.out_channels) < ctx.options.tucker_min_channels:
                problem = (
                    f"fewer than tucker_min_channels={ctx.options.tucker_min_channels} channels"
                )
            details = {}
            if not problem:
                u_out, core, u_in = tucker2_factors(
                    conv.weight, ctx.options, ctx.options.tucker_ranks.get(node.target)
                )
                r_out, r_in = core.shape[:2]
                k = conv.kernel_size[0] * conv.kernel_size[1]
                before = conv.out_channels * conv.in_channels * k
                after = conv.in_channels * r_in + r_in * r_out * k + r_out * conv.out_channels
                details = {"ranks": [r_in, r_out]}
                if after >= before:
                    problem = f"ranks (in {r_in}, out {r_out}) save nothing ({after} >= {before} MACs per pixel)"
            reason = (
                problem or f"Tucker-2 ranks in {details['ranks'][0]}, out {details['ranks'][1]}"
            )
            sites.append(self.site((node.target,), reason, applies=not problem, **details))
        return sites

    def replacements(
        self, model: nn.Module, site: Site, options: SlimOptions
    ) -> dict[str, nn.Module]:
        conv = model.get_submodule(site.modules[0])
        if not isinstance(conv, nn.Conv2d):
            raise SiteError(f"{site.modules[0]} is no longer an nn.Conv2d")
        u_out, core, u_in = tucker2_factors(
            conv.weight, options, options.tucker_ranks.get(site.modules[0])
        )
        r_out, r_in = core.shape[:2]
        first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
        middle = nn.Conv2d(
            r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False
        )
        last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
        dtype = conv.weight.dtype
        with torch.no_grad():
            first.weight.copy_(u_in.t().reshape(r_in, conv.in_channels, 1, 1).to(dtype))
            middle.weight.copy_(core.to(dtype))
            last.weight.copy_(u_out.reshape(conv.out_channels, r_out, 1, 1).to(dtype))
            if conv.bias is not None:
                last.bias.copy_(conv.bias)
        decomposed = nn.Sequential(first, middle, last).to(device=conv.weight.device)
        return {site.modules[0]: mark_new(decomposed)}
