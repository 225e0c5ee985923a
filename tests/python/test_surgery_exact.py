"""Exact rules (fold_bn, fuse_conv_pool, merge_branches, then pack_conv) keep outputs to fp32
rounding.

Reference: the unmodified model on the same input (random weights, randomised BatchNorm
statistics so that folding is not the identity). Small inputs keep each model to a few forwards.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _surgery_helpers import randomize_batchnorm
from torch import nn

import deeprebirth
from deeprebirth.models import build_model
from deeprebirth.nn import PackedConv2d, PackedResidualStage
from deeprebirth.ops import BranchConv2d, ConvPool2d

EXACT_RULES = ["fold_bn", "fuse_conv_pool", "merge_branches"]

# name -> (input size, constructor kwargs, minimum applied sites per rule)
MODELS = {
    "bvlc_googlenet": (64, {"width": 0.25}, {"fuse_conv_pool": 1, "merge_branches": 9}),
    "torchvision:googlenet": (
        64,
        {"aux_logits": False, "init_weights": False},
        {"fold_bn": 57, "fuse_conv_pool": 2, "merge_branches": 9},
    ),
    "torchvision:inception_v3": (
        96,
        {"aux_logits": False, "init_weights": False},
        {"fold_bn": 94, "fuse_conv_pool": 2, "merge_branches": 10},
    ),
    "torchvision:resnet18": (64, {}, {"fold_bn": 20, "fuse_conv_pool": 1}),
    "torchvision:resnet50": (64, {}, {"fold_bn": 53, "fuse_conv_pool": 1}),
    "torchvision:vgg16_bn": (64, {}, {"fold_bn": 13, "fuse_conv_pool": 5}),
    "torchvision:mobilenet_v2": (64, {}, {"fold_bn": 52}),
    "torchvision:efficientnet_b0": (64, {}, {"fold_bn": 49}),
    "torchvision:squeezenet1_1": (64, {}, {"fuse_conv_pool": 1, "merge_branches": 8}),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_exact_rules_keep_outputs(name: str, monkeypatch) -> None:
    size, kwargs, expected = MODELS[name]
    model = randomize_batchnorm(build_model(name, num_classes=10, **kwargs))
    x = torch.randn(1, 3, size, size)
    slim_model, report = deeprebirth.slim(model, EXACT_RULES, x)

    check = deeprebirth.verify(model, slim_model, x)
    assert check.max_rel <= 1e-4, f"{name}: {check}"
    assert report.exact
    counts = {rule: sum(1 for s in report.applied if s.rule == rule) for rule in EXACT_RULES}
    for rule, minimum in expected.items():
        assert counts[rule] >= minimum, f"{name}: {counts}"
    # every BatchNorm that ran was folded away
    used = {
        n for n, m in slim_model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    assert not used, f"{name}: BatchNorm left: {sorted(used)[:3]}"
    assert sum(isinstance(m, ConvPool2d) for m in slim_model.modules()) == counts["fuse_conv_pool"]
    assert (
        sum(isinstance(m, BranchConv2d) for m in slim_model.modules()) == counts["merge_branches"]
    )
    # then the CPU deployment rule, every remaining convolution on its packed path
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", 0)
    packed, packed_report = deeprebirth.slim(slim_model, ["pack_conv"], x)
    assert packed_report.exact and packed_report.applied
    check = deeprebirth.verify(model, packed, x)
    assert check.max_rel <= 1e-4, f"{name} + pack_conv: {check}"
    assert any(m.packed_weights for m in packed.modules() if isinstance(m, PackedConv2d))


@pytest.mark.parametrize(
    "name, stages",
    [
        ("torchvision:resnet18", ("layer2", "layer3", "layer4")),  # 3x3 s2 conv1, 1x1 s2 shortcut
        ("torchvision:resnet50", ("layer1",)),  # later stages: conv1 s1, shortcut s2, no group
    ],
)
def test_merge_branches_leaves_residual_blocks_to_pack_conv(name: str, stages: tuple) -> None:
    """A ResNet block's conv1 (ReLU after its folded BatchNorm) and downsample (no ReLU, read by
    the add) are not merged: every such block is skipped with the reason, and pack_conv then
    packs every stage whole."""
    model = randomize_batchnorm(build_model(name, num_classes=10))
    x = torch.randn(1, 3, 64, 64)
    slim_model, report = deeprebirth.slim(model, [*EXACT_RULES, "pack_conv"], x)
    skipped = [s for s in report.skipped if s.rule == "merge_branches" and "mixed" in s.reason]
    assert sorted(s.modules for s in skipped) == sorted(
        (f"{stage}.0.conv1", f"{stage}.0.downsample.0") for stage in stages
    )
    assert not any(isinstance(m, BranchConv2d) for m in slim_model.modules())
    stages = [m for m in slim_model.modules() if isinstance(m, PackedResidualStage)]
    assert len(stages) == 4
    assert deeprebirth.verify(model, slim_model, x).max_rel <= 1e-4


def test_merge_branches_fuses_relus_behind_folded_batchnorms() -> None:
    """torchvision's Inception branches are conv -> BatchNorm -> ReLU: once fold_bn leaves an
    nn.Identity in each BatchNorm's place, the merged layer still fuses the ReLUs, and no ReLU
    is left writing into a view of it."""
    kwargs = {"aux_logits": False, "init_weights": False}
    model = randomize_batchnorm(build_model("torchvision:googlenet", num_classes=10, **kwargs))
    x = torch.randn(1, 3, 64, 64)
    slim_model, _ = deeprebirth.slim(model, EXACT_RULES, x)
    merged = [m for m in slim_model.modules() if isinstance(m, BranchConv2d)]
    assert len(merged) == 9 and all(m.relu for m in merged)
    for module in slim_model.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.target is torch.narrow:
                readers = [user.target for user in node.users]
                assert torch.nn.functional.relu not in readers, (module, node, readers)
    assert deeprebirth.verify(model, slim_model, x).max_rel <= 1e-4


def test_fold_bn_matches_closed_form_batch_norm() -> None:
    torch.manual_seed(3)
    for groups, bias in [(1, True), (4, False)]:
        conv = nn.Conv2d(8, 12, 3, padding=1, groups=groups, bias=bias)
        bn = randomize_batchnorm(nn.Sequential(nn.BatchNorm2d(12)), seed=groups)[0]
        model = nn.Sequential(conv, bn).eval()
        slim_model, report = deeprebirth.slim(model, "fold_bn", torch.zeros(1, 8, 9, 9))
        x = torch.randn(3, 8, 9, 9)
        expected = F.batch_norm(F.conv2d(x, conv.weight, conv.bias, 1, 1, 1, groups),
                                bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)  # fmt: skip
        torch.testing.assert_close(slim_model(x), expected, rtol=1e-5, atol=1e-5)
        assert isinstance(slim_model[1], nn.Identity) and slim_model[0].bias is not None
        assert [s.modules for s in report.applied] == [("0", "1")]


def test_fold_bn_into_linear() -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU()).eval()
    randomize_batchnorm(model)
    x = torch.randn(4, 6)
    slim_model, report = deeprebirth.slim(model, "fold_bn", x)
    assert len(report.applied) == 1
    assert deeprebirth.verify(model, slim_model, x).max_rel <= 1e-5


def test_exact_rules_on_channels_last_input() -> None:
    model = randomize_batchnorm(build_model("torchvision:resnet18", num_classes=10))
    x = torch.randn(1, 3, 48, 48)
    slim_model, _ = deeprebirth.slim(model, EXACT_RULES, x)
    model = model.to(memory_format=torch.channels_last)
    slim_model = slim_model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    assert deeprebirth.verify(model, slim_model, x).max_rel <= 1e-4
