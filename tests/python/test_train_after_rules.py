"""Models produced by the exact rules train: no in-place write to a view breaks autograd, and the
input gradient equals the unmodified model's."""

from __future__ import annotations

import torch

import deeprebirth
from deeprebirth.models import build_model


def test_merged_googlenet_trains_and_matches_the_original_gradient():
    torch.manual_seed(0)
    model = build_model("bvlc_googlenet", num_classes=10, width=0.25, lrn=False)
    slim, _ = deeprebirth.slim(model, ["fuse_conv_pool", "merge_branches"], (1, 3, 64, 64))
    grads = []
    for net in (model, slim):
        net.train()
        net.dropout.p = 0.0  # the same function in both, so the gradients compare
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        x.requires_grad_(True)
        net(x).square().sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
    exported = torch.export.export(deeprebirth.export.make_portable(slim).eval(), (x.detach(),))
    assert not [n for n in exported.graph.nodes if "slice_scatter" in str(n.target)]
