"""Inexact rules on bvlc_googlenet give the paper's architecture, and the result trains.

GoogLeNet-Slim (DeepRebirth, Sec. 3): conv1 7x7/2 + pool 3/2 (+LRN) -> one 7x7/4 conv;
conv2: the 1x1 reducer stays, 3x3/1 + LRN + pool 3/2 -> one 3x3/2 conv; every Inception module
loses its 1x1 and pool-projection branches, its width moving to the 3x3/5x5 branches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deeprebirth
from deeprebirth.models import bvlc_googlenet
from deeprebirth.models.bvlc_googlenet import INCEPTION_CONFIG as INCEPTION_CONFIG_FOR_TESTS
from deeprebirth.surgery import SlimOptions, new_parameters
from deeprebirth.surgery.rules.branch_slim import slimmed_widths

WIDTH = 0.25
SIZE = 64


def scaled(c: int) -> int:
    return max(1, round(c * WIDTH))


@pytest.fixture(scope="module")
def slimmed():
    torch.manual_seed(0)
    model = bvlc_googlenet(num_classes=10, width=WIDTH).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    slim_model, report = deeprebirth.slim(
        model, ["streamline", "branch_slim"], x, reduce_factor=0.5
    )
    return model, slim_model, report, x


def test_stem_blocks_are_streamlined(slimmed) -> None:
    model, slim_model, report, x = slimmed
    conv1, conv2 = slim_model.conv1, slim_model.conv2
    assert type(conv1.conv) is nn.Conv2d and conv1.conv.kernel_size == (7, 7)
    assert conv1.conv.stride == (4, 4) and conv1.conv.out_channels == scaled(64)
    assert isinstance(conv1.pool, nn.Identity) and isinstance(conv1.norm, nn.Identity)
    assert isinstance(conv1.relu, nn.ReLU)
    assert type(conv2.reduce) is nn.Conv2d and conv2.reduce.stride == (1, 1)  # reducer stays
    assert conv2.conv.kernel_size == (3, 3) and conv2.conv.stride == (2, 2)
    assert conv2.conv.out_channels == scaled(192)
    assert isinstance(conv2.pool, nn.Identity) and isinstance(conv2.norm, nn.Identity)
    # block outputs keep their spatial size (padding chosen for it)
    with torch.no_grad():
        for name in ("conv1", "conv2"):
            h = x if name == "conv1" else model.conv1(x)
            hs = x if name == "conv1" else slim_model.conv1(x)
            assert getattr(model, name)(h).shape == getattr(slim_model, name)(hs).shape
    stems = [s for s in report.applied if s.rule == "streamline"]
    assert [s.modules[0] for s in stems] == ["conv1.conv", "conv2.conv"]
    assert not any(s.exact for s in stems)


@pytest.mark.parametrize("name", list(INCEPTION_CONFIG_FOR_TESTS))
def test_inception_modules_are_branch_slimmed(slimmed, name: str) -> None:
    model, slim_model, _, _ = slimmed
    old, new = getattr(model, name), getattr(slim_model, name)
    c_in, c1, r3, c3, r5, c5, pp = (scaled(c) for c in INCEPTION_CONFIG_FOR_TESTS[name])
    assert new.conv_1x1 is None and new.pool_proj is None and new.pool is None
    new3, new5 = slimmed_widths(c1, c3, c5, pp, SlimOptions().channel_multiple)
    assert new3 + new5 == old.out_channels == new.out_channels
    assert new3 > c3 and new5 > c5
    assert new.conv_3x3_reduce.out_channels == max(1, round(r3 * 0.5))
    assert new.conv_5x5_reduce.out_channels == max(1, round(r5 * 0.5))
    assert (new.conv_3x3.out_channels, new.conv_5x5.out_channels) == (new3, new5)
    assert new.conv_3x3.kernel_size == (3, 3) and new.conv_5x5.kernel_size == (5, 5)
    assert new.conv_3x3_reduce.in_channels == old.conv_3x3_reduce.in_channels


def test_slim_model_is_cheaper_and_marks_new_layers(slimmed) -> None:
    model, slim_model, report, x = slimmed
    assert report.after.macs < 0.6 * report.before.macs
    assert report.after.act_bytes < report.before.act_bytes
    marked = new_parameters(slim_model)
    assert "conv1.conv.weight" in marked and "inception_3a.conv_3x3.weight" in marked
    assert "conv2.reduce.weight" not in marked and "classifier.weight" not in marked
    assert slim_model(x).shape == model(x).shape


def test_inherit_copies_old_weights() -> None:
    torch.manual_seed(0)
    model = bvlc_googlenet(num_classes=10, width=WIDTH).eval()
    x = torch.zeros(1, 3, SIZE, SIZE)
    slim_model, _ = deeprebirth.slim(model, ["streamline", "branch_slim"], x, init="inherit")
    torch.testing.assert_close(slim_model.conv1.conv.weight, model.conv1.conv.weight)
    new, old = slim_model.inception_3a.conv_3x3, model.inception_3a.conv_3x3
    torch.testing.assert_close(
        new.weight[: old.out_channels, : new.in_channels], old.weight[:, : new.in_channels]
    )
    xavier, _ = deeprebirth.slim(model, ["streamline"], x, init="xavier")
    assert not torch.equal(xavier.conv1.conv.weight, model.conv1.conv.weight)


def test_slimmed_model_trains() -> None:
    """Loss falls on a small fixed batch when training the inexact-slimmed model (new layers 10x)."""
    torch.manual_seed(0)
    model = bvlc_googlenet(num_classes=4, width=WIDTH, lrn=True).eval()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    slim_model, _ = deeprebirth.slim(model, ["streamline", "branch_slim"], x[:1])
    slim_model.train()
    new_ids = {id(p) for p in new_parameters(slim_model).values()}
    rest = [p for p in slim_model.parameters() if id(p) not in new_ids]
    fast = [p for p in slim_model.parameters() if id(p) in new_ids]
    optimizer = torch.optim.Adam([{"params": rest}, {"params": fast, "lr": 3e-3}], lr=3e-4)
    slim_model.dropout.p = 0.0
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = F.cross_entropy(slim_model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_torchvision_googlenet_branch_slim_keeps_widths() -> None:
    from deeprebirth.models import build_model
    from deeprebirth.surgery.modules import ConcatBranches

    model = build_model(
        "torchvision:googlenet", num_classes=10, aux_logits=False, init_weights=False
    )
    x = torch.randn(1, 3, 64, 64)
    slim_model, report = deeprebirth.slim(model, ["streamline", "branch_slim"], x)
    assert sum(s.rule == "branch_slim" for s in report.applied) == 9
    assert isinstance(slim_model.inception3a, ConcatBranches)
    widths = [b[1].conv.out_channels for b in slim_model.inception3a.branches]
    assert sum(widths) == 256
    assert slim_model(x).shape == (1, 10)
    # torchvision's stem: conv1 -> BN -> ReLU -> maxpool1 and conv3 -> ... -> maxpool2
    assert slim_model.conv1.conv.stride == (4, 4) and isinstance(slim_model.maxpool1, nn.Identity)


def test_fully_slimmed_model_saves_and_keeps_marks(tmp_path) -> None:
    from deeprebirth.io import load_model, save_model

    torch.manual_seed(0)
    model = bvlc_googlenet(num_classes=10, width=WIDTH).eval()
    rules = ["streamline", "branch_slim", "fold_bn", "fuse_conv_pool", "merge_branches"]
    slim_model, report = deeprebirth.slim(model, rules, torch.zeros(1, 3, SIZE, SIZE))
    marked = new_parameters(slim_model)
    assert "inception_3a.merged_conv_3x3_reduce__conv_5x5_reduce.weights.0" in marked
    loaded, _ = load_model(save_model(tmp_path / "slim.pt", slim_model, {"plan": report.to_dict()}))
    assert set(new_parameters(loaded)) == set(marked)
    x = torch.randn(1, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded(x), slim_model(x))


@pytest.mark.parametrize("name", list(INCEPTION_CONFIG_FOR_TESTS))
def test_slimmed_widths_round_to_the_channel_multiple(name: str) -> None:
    _, c1, _, c3, _, c5, pp = INCEPTION_CONFIG_FOR_TESTS[name]
    exact3, exact5 = slimmed_widths(c1, c3, c5, pp)
    assert exact3 + exact5 == c1 + c3 + c5 + pp
    # the exact split is proportional to the kept branches' widths
    assert abs(exact3 * c5 - exact5 * c3) <= c3 + c5
    new3, new5 = slimmed_widths(c1, c3, c5, pp, multiple=16)
    assert (new3 % 16, new5 % 16) == (0, 0)  # every GoogLeNet module width is a multiple of 16
    assert new3 + new5 == exact3 + exact5 and abs(new3 - exact3) <= 8


def test_slimmed_widths_keep_the_exact_split_when_the_width_is_no_multiple() -> None:
    assert slimmed_widths(60, 130, 30, 30, multiple=16) == slimmed_widths(60, 130, 30, 30)
    assert slimmed_widths(4, 8, 2, 2, multiple=16) == slimmed_widths(4, 8, 2, 2)  # 16 < 2 * 16
    with pytest.raises(ValueError, match="channel_multiple"):
        SlimOptions(channel_multiple=0)


def test_recipes_without_channel_multiple_rebuild_the_exact_split() -> None:
    """Model files written before the option existed rebuild the widths they were trained at."""
    from deeprebirth.models.recipe import get_recipe, rebuild

    model = bvlc_googlenet(num_classes=10).eval()
    slim_model, _ = deeprebirth.slim(model, ["branch_slim"], (1, 3, 64, 64))
    recipe = get_recipe(slim_model)
    c1, c3, c5, pp = (INCEPTION_CONFIG_FOR_TESTS["inception_3a"][i] for i in (1, 3, 5, 6))

    def widths(net: nn.Module) -> tuple[int, int]:
        return net.inception_3a.conv_3x3.out_channels, net.inception_3a.conv_5x5.out_channels

    assert widths(slim_model) == widths(rebuild(recipe)) == slimmed_widths(c1, c3, c5, pp, 16)
    del recipe["steps"][-1]["options"]["channel_multiple"]
    assert widths(rebuild(recipe)) == slimmed_widths(c1, c3, c5, pp) != widths(slim_model)
