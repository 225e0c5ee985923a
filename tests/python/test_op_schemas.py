"""Both operators against torch.nn.functional (their ATen references), argument checking, and
availability from TorchScript and torch.compile."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from aten_references import unfused_branch_conv, unfused_conv_pool
from op_cases import valid_conv_pool_kwargs

import deeprebirth  # noqa: F401  (loads the operators)

conv_pool_op = torch.ops.deeprebirth.conv_pool
branch_conv_op = torch.ops.deeprebirth.branch_conv


# (x shape, w shape, stride, padding, dilation, groups, pool, pool k/s/p, ceil, relu)
CONV_POOL_CASES = [
    ((1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, 1, "max", (3, 2, 0), True, True),  # conv1
    ((1, 64, 56, 56), (192, 64, 3, 3), 1, 1, 1, 1, "max", (3, 2, 0), True, True),  # conv2
    ((2, 3, 33, 31), (8, 3, 5, 5), 1, 2, 1, 1, "avg", (3, 2, 1), False, False),  # odd sizes
    ((3, 6, 17, 19), (9, 2, 3, 3), 2, 1, 2, 3, "max", (2, 2, 0), True, True),  # groups, dilation
    ((0, 4, 9, 9), (4, 4, 3, 3), 1, 1, 1, 1, "max", (2, 2, 0), False, True),  # empty batch
    ((2, 5, 7, 7), (3, 5, 1, 1), 3, 0, 1, 1, "avg", (2, 1, 1), True, True),  # ceil + pad
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CONV_POOL_CASES, ids=lambda c: f"x{c[0]}-w{c[1]}-{c[6]}")
def test_conv_pool_matches_aten(case, dtype):
    xs, ws, s, p, d, g, pool, (pk, ps, pp), ceil, relu = case
    # weights scaled by 1/sqrt(fan_in) (as trained layers are): with unit-variance weights a
    # 576-term sum has magnitude ~24, and oneDNN's tiled vs. whole-image accumulation orders differ
    # by float rounding (~1e-5 absolute) that rtol cannot absorb near zero.
    x, w, b = (
        torch.randn(xs, dtype=dtype),
        torch.randn(ws, dtype=dtype) / (ws[1] * ws[2] * ws[3]) ** 0.5,
        torch.randn(ws[0], dtype=dtype),
    )
    args = ([s, s], [p, p], [d, d], g, pool, [pk, pk], [ps, ps], [pp, pp], ceil, relu)
    out = conv_pool_op(x, w, b, *args)
    ref = unfused_conv_pool(x, w, b, *args)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(out, ref, **tol)


def test_conv_pool_random_grid():
    rng = random.Random(1)
    for _ in range(30):
        g = rng.choice([1, 1, 2])
        cin, cout = g * rng.randint(1, 6), g * rng.randint(1, 6)
        k, s, d = rng.randint(1, 5), rng.randint(1, 3), rng.choice([1, 1, 2])
        p = rng.randint(0, k // 2)
        pk = rng.randint(1, 3)
        pp = rng.randint(0, pk // 2)
        span = d * (k - 1) + 1
        h, w_ = rng.randint(max(span, pk), 40), rng.randint(max(span, pk), 40)
        x = torch.randn(rng.randint(0, 3), cin, h, w_)
        w, b = torch.randn(cout, cin // g, k, k), rng.choice([None, torch.randn(cout)])
        pool, ceil, relu = rng.choice(["max", "avg"]), rng.random() < 0.5, rng.random() < 0.5
        ps = rng.randint(1, 3)
        args = ([s, s], [p, p], [d, d], g, pool, [pk, pk], [ps, ps], [pp, pp], ceil, relu)
        torch.testing.assert_close(
            conv_pool_op(x, w, b, *args), unfused_conv_pool(x, w, b, *args), rtol=1e-4, atol=1e-5
        )


INCEPTION_1X1 = {  # module input channels and the three 1x1 widths, from Caffe's prototxt
    "3a": (192, 28, [64, 96, 16]),
    "4a": (480, 14, [192, 96, 16]),
    "5b": (832, 7, [384, 192, 48]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("module", sorted(INCEPTION_1X1))
def test_branch_conv_matches_aten_on_inception_shapes(module, dtype):
    cin, size, widths = INCEPTION_1X1[module]
    x = torch.randn(2, cin, size, size, dtype=dtype)
    # trained-like weight scale (1/sqrt(fan_in)) keeps outputs O(1), where rtol is meaningful
    weights = [torch.randn(c, cin, 1, 1, dtype=dtype) / cin**0.5 for c in widths]
    biases = [torch.randn(c, dtype=dtype) for c in widths]
    out = branch_conv_op(x, weights, biases, [0, 0, 0], 1, True)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    ref = unfused_branch_conv(x, weights, biases, [0, 0, 0], 1, True)
    torch.testing.assert_close(out, ref, **tol)


def test_branch_conv_mixed_kernels_grid():
    rng = random.Random(2)
    for _ in range(20):
        cin, stride = rng.randint(1, 12), rng.randint(1, 2)
        kernels = [rng.choice([1, 3, 5, 7]) for _ in range(rng.randint(1, 4))]
        size = rng.randint(7, 23)
        x = torch.randn(rng.randint(0, 3), cin, size, size + 2)
        weights = [torch.randn(rng.randint(1, 8), cin, k, k) for k in kernels]
        biases = [rng.choice([None, torch.randn(w.shape[0])]) for w in weights]
        paddings = [k // 2 for k in kernels]
        relu = rng.random() < 0.5
        torch.testing.assert_close(
            branch_conv_op(x, weights, biases, paddings, stride, relu),
            unfused_branch_conv(x, weights, biases, paddings, stride, relu),
            rtol=1e-4,
            atol=1e-5,
        )


CONV_POOL_BAD = {
    "x rank": (dict(x=torch.randn(4, 8, 8)), "x"),
    "w rank": (dict(w=torch.randn(4, 4, 3)), "w"),
    "channel mismatch": (dict(w=torch.randn(4, 3, 3, 3)), "channels"),
    "dtype mismatch": (dict(w=torch.randn(4, 4, 3, 3, dtype=torch.float64)), "w"),
    "bias size": (dict(b=torch.randn(3)), "b"),
    "zero stride": (dict(stride=[0, 1]), "stride"),
    "negative padding": (dict(padding=[-1, 0]), "padding"),
    "zero dilation": (dict(dilation=[1, 0]), "dilation"),
    "bad groups": (dict(groups=3), "groups"),
    "kernel too large": (dict(w=torch.randn(4, 4, 9, 9)), "larger than the padded input"),
    "unknown pool": (dict(pool="median"), "pool"),
    "zero pool stride": (dict(pool_stride=[0, 2]), "pool_stride"),
    "pool padding": (dict(pool_padding=[2, 2]), "pool_padding"),
    "empty output": (dict(pool_kernel=[7, 7], pool_stride=[1, 1]), "pooled output size"),
    "int list length": (dict(stride=[1, 1, 1]), "stride"),
}


@pytest.mark.parametrize("case", sorted(CONV_POOL_BAD))
def test_conv_pool_bad_input_names_the_argument(case):
    overrides, expected = CONV_POOL_BAD[case]
    with pytest.raises(RuntimeError, match=expected):
        conv_pool_op(**valid_conv_pool_kwargs(**overrides))


BRANCH_BAD = {
    "empty weights": (lambda x: ([], [], [], 1), "weights"),
    "bias count": (lambda x: ([torch.randn(2, 4, 1, 1)], [], [0], 1), "biases"),
    "padding count": (lambda x: ([torch.randn(2, 4, 1, 1)], [None], [], 1), "paddings"),
    "channels": (
        lambda x: ([torch.randn(2, 4, 1, 1), torch.randn(2, 3, 1, 1)], [None, None], [0, 0], 1),
        "branch 1",
    ),
    "size mismatch": (
        lambda x: ([torch.randn(2, 4, 1, 1), torch.randn(2, 4, 3, 3)], [None, None], [0, 0], 1),
        "branch 1",
    ),
    "bias shape": (
        lambda x: ([torch.randn(2, 4, 1, 1)], [torch.randn(3)], [0], 1),
        "biases\\[0\\]",
    ),
    "zero stride": (lambda x: ([torch.randn(2, 4, 1, 1)], [None], [0], 0), "stride"),
    "kernel too large": (lambda x: ([torch.randn(2, 4, 11, 11)], [None], [0], 1), "larger"),
    "dtype": (lambda x: ([torch.randn(2, 4, 1, 1).double()], [None], [0], 1), "weights\\[0\\]"),
}


@pytest.mark.parametrize("case", sorted(BRANCH_BAD))
def test_branch_conv_bad_input_names_the_argument(case):
    make, expected = BRANCH_BAD[case]
    x = torch.randn(1, 4, 8, 8)
    weights, biases, paddings, stride = make(x)
    with pytest.raises(RuntimeError, match=expected):
        branch_conv_op(x, weights, biases, paddings, stride, False)


def test_ops_work_under_torchscript():
    @torch.jit.script
    def scripted(x: torch.Tensor, w: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
        y = torch.ops.deeprebirth.conv_pool(
            x, w, None, [1, 1], [1, 1], [1, 1], 1, "max", [2, 2], [2, 2], [0, 0], False, True
        )
        biases: list[torch.Tensor | None] = [None, None]
        return torch.ops.deeprebirth.branch_conv(y, [w1, w1], biases, [0, 0], 1, False)

    x, w, w1 = torch.randn(2, 3, 10, 10), torch.randn(5, 3, 3, 3), torch.randn(2, 5, 1, 1)
    pooled = F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2)
    torch.testing.assert_close(scripted(x, w, w1), torch.cat([F.conv2d(pooled, w1)] * 2, 1))


def test_ops_work_under_torch_compile_fullgraph():
    def fn(x, w, w1):
        y = torch.ops.deeprebirth.conv_pool(
            x, w, None, [2, 2], [3, 3], [1, 1], 1, "max", [3, 3], [2, 2], [0, 0], True, True
        )
        return torch.ops.deeprebirth.branch_conv(y, [w1], [None], [1], 1, True)

    x, w, w1 = torch.randn(1, 3, 32, 32), torch.randn(8, 3, 7, 7), torch.randn(4, 8, 3, 3)
    compiled = torch.compile(fn, fullgraph=True)  # inductor, the default backend
    torch.testing.assert_close(compiled(x, w, w1), fn(x, w, w1))


def test_fake_implementations_give_the_real_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    real_x, real_w = torch.randn(2, 3, 33, 31), torch.randn(8, 3, 7, 7)
    args = ([2, 2], [3, 3], [1, 1], 1, "max", [3, 3], [2, 2], [0, 0], True, True)
    real = conv_pool_op(real_x, real_w, None, *args)
    with FakeTensorMode() as mode:
        fake = conv_pool_op(mode.from_tensor(real_x), mode.from_tensor(real_w), None, *args)
    assert fake.shape == real.shape and fake.dtype == real.dtype


def test_torch_export_keeps_the_batch_dynamic():
    """Neither operator's autograd/fake path specialises a symbolic batch size."""
    from torch import nn

    from deeprebirth.ops import BranchConv2d, ConvPool2d

    model = nn.Sequential(
        ConvPool2d(3, 8, 3, padding=1, pool_kernel=2),
        BranchConv2d.from_convs([nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 3, padding=1)], relu=True),
    ).eval()
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.export.export(
            model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},)
        )
        x = torch.randn(5, 3, 16, 16)
        torch.testing.assert_close(program.module()(x), model(x))
