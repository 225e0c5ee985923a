"""The unfused ATen sequences the operators replace: the independent references of the op tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def unfused_conv_pool(x, w, b, stride, padding, dilation, groups, pool, pk, ps, pp, ceil, relu):
    """``pool(relu?(conv2d(x, w, b)))`` by torch.nn.functional, in conv_pool's argument order."""
    y = F.conv2d(x, w, b, stride, padding, dilation, groups)
    y = F.relu(y) if relu else y
    if pool == "max":
        return F.max_pool2d(y, pk, ps, pp, 1, ceil)
    return F.avg_pool2d(y, pk, ps, pp, ceil, count_include_pad=True)


def unfused_branch_conv(x, weights, biases, paddings, stride, relu) -> torch.Tensor:
    """``cat([relu?(conv2d(x, w_i, b_i, stride, p_i))], 1)``, in branch_conv's argument order."""
    outs = [F.conv2d(x, w, b, stride, p) for w, b, p in zip(weights, biases, paddings, strict=True)]
    return torch.cat([F.relu(o) if relu else o for o in outs], 1)
