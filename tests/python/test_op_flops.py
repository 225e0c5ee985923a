"""FlopCounterMode sees deeprebirth's operators: the deployed model counts what its portable form
(standard layers only, counted by torch's own formulas) counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import deeprebirth
from deeprebirth.models import build_model
from deeprebirth.ops import _reference

EXACT_DEPLOY = ["fold_bn", "fuse_conv_pool", "merge_branches", "pack_conv"]


def _flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "stride, padding, dilation, groups", [(1, 1, 1, 1), (2, 3, 1, 1), (1, 2, 2, 2), (3, 0, 1, 4)]
)
def test_conv_pool_counts_its_convolution(stride, padding, dilation, groups):
    x, w, b = torch.randn(2, 8, 19, 17), torch.randn(12, 8 // groups, 3, 5), torch.randn(12)
    args = (x, w, b, [stride] * 2, [padding] * 2, [dilation] * 2, groups, "max", [3, 3], [2, 2])
    args += ([1, 1], True, True)
    assert _flops(deeprebirth.ops.conv_pool, *args) == _flops(_reference.conv_pool_reference, *args)
    assert _flops(deeprebirth.ops.conv_pool, *args) > 0


def test_branch_conv_counts_every_branch():
    x = torch.randn(1, 16, 14, 14)
    weights = [torch.randn(8, 16, k, k) for k in (1, 3, 5)]
    biases = [torch.randn(8) for _ in weights]
    args = (x, weights, biases, [0, 1, 2], 1, True)
    assert _flops(deeprebirth.ops.branch_conv, *args) == _flops(
        _reference.branch_conv_reference, *args
    )


@pytest.mark.parametrize("name, size", [("bvlc_googlenet", 96), ("torchvision:resnet18", 64)])
def test_deployed_model_counts_what_its_portable_form_counts(name, size):
    torch.manual_seed(0)
    kwargs = {"width": 0.25} if name == "bvlc_googlenet" else {}
    model = build_model(name, num_classes=10, **kwargs)
    shape = (1, 3, size, size)
    if name == "bvlc_googlenet":
        model, _ = deeprebirth.slim(model, ["streamline", "branch_slim"], shape)
    deployed, _ = deeprebirth.slim(model.eval(), EXACT_DEPLOY, shape)
    portable = deeprebirth.export.make_portable(deployed)
    assert deeprebirth.export.uses_deeprebirth_ops(deployed)
    x = torch.randn(shape)
    expected = _flops(portable.eval(), x)
    assert expected == _flops(model.eval(), x)
    for _ in range(2):  # the first call packs weights; both calls count the same work
        assert _flops(deployed.eval(), x) == expected


def test_small_conv2d_add_counts_its_convolution():
    x, w, b = torch.randn(2, 8, 9, 9), torch.randn(12, 8, 3, 3), torch.randn(12)
    residual = torch.randn(2, 12, 9, 9)
    packed = deeprebirth.ops.direct_conv_pack(w)
    counted = _flops(deeprebirth.ops.small_conv2d_add_, residual, x, w, packed, b, 1, 1)
    assert counted == _flops(torch.nn.functional.conv2d, x, w, b, 1, 1) > 0


def test_winograd_conv2d_counts_the_convolution_it_computes():
    """Winograd does fewer multiplications; its count is the convolution's, as the portable form
    counts it, and torch.compile sees the operator's output shape through its fake kernel."""
    x, w, b = torch.randn(2, 8, 9, 7), torch.randn(20, 8, 3, 3), torch.randn(20)
    packed = deeprebirth.ops.winograd_pack(w)
    counted = _flops(deeprebirth.ops.winograd_conv2d, x, packed, b, 20, (1, 0))
    assert counted == _flops(torch.nn.functional.conv2d, x, w, b, 1, (1, 0)) > 0
    with torch.no_grad():
        compiled = torch.compile(deeprebirth.ops.winograd_conv2d, backend="eager", fullgraph=True)
        torch.testing.assert_close(
            compiled(x, packed, b, 20, (1, 0)), torch.nn.functional.conv2d(x, w, b, 1, (1, 0)),
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip
