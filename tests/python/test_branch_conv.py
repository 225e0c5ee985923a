"""deeprebirth::branch_conv against torch.nn.functional: a randomized grid, layouts, gradients
(gradcheck in fp64), torch.library.opcheck, argument errors, and BranchConv2d.from_convs."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from aten_references import unfused_branch_conv as unfused
from torch import nn

from deeprebirth.ops import BranchConv2d, branch_conv

op = torch.ops.deeprebirth.branch_conv
backward_op = torch.ops.deeprebirth.branch_conv_backward


def random_case(rng: random.Random, dtype=torch.float32, requires_grad=False, max_batch=4):
    """Random branches sharing one output size: odd kernels with "same" padding (runs of equal
    kernels included, so the merged-GEMM path is exercised), mixed biases, stride 1-2."""
    branches = rng.randint(1, 4)
    pool = [1, 1, 1, 3, 3, 5, 7]
    kernels = [rng.choice(pool) for _ in range(branches)]
    if rng.random() < 0.5:
        kernels.sort()  # consecutive equal kernels merge into one call
    n, c_in = rng.randint(0, max_batch), rng.randint(1, 9)
    h, w = rng.randint(max(kernels) // 2 + 1, 15), rng.randint(max(kernels) // 2 + 1, 15)
    opts = {"dtype": dtype, "requires_grad": requires_grad}
    x = torch.randn(n, c_in, h, w, **opts)
    weights = [torch.randn(rng.randint(1, 6), c_in, k, k, **opts) for k in kernels]
    biases = [torch.randn(wt.shape[0], **opts) if rng.random() < 0.6 else None for wt in weights]
    paddings = [k // 2 for k in kernels]
    return x, weights, biases, paddings, rng.randint(1, 2), rng.random() < 0.5


def relayout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # a non-contiguous view with the same values
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_random_grid_matches_unfused(dtype, layout):
    rng = random.Random(hash((str(dtype), layout)) % 1000)
    torch.manual_seed(rng.randint(0, 10_000))
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}
    for _ in range(40):
        x, weights, biases, paddings, stride, relu = random_case(rng, dtype)
        x = relayout(x, layout)
        out = op(x, weights, biases, paddings, stride, relu)
        torch.testing.assert_close(out, unfused(x, weights, biases, paddings, stride, relu), **tol)
        if layout == "channels_last" and not x.is_contiguous():
            assert out.is_contiguous(memory_format=torch.channels_last)
        else:
            assert out.is_contiguous()


def test_inception_reducers_match_unfused():
    """GoogLeNet inception_3a's three 1x1 convs (one merged GEMM) in both layouts."""
    x = torch.randn(2, 192, 28, 28)
    weights = [torch.randn(c, 192, 1, 1) * 0.05 for c in (64, 96, 16)]
    biases = [torch.randn(c) for c in (64, 96, 16)]
    for xl in (x, x.contiguous(memory_format=torch.channels_last)):
        out = branch_conv(xl, weights, biases, relu=True)
        torch.testing.assert_close(out, unfused(x, weights, biases, [0, 0, 0], 1, True))


def test_mixed_runs_channels_last_gemm_into_slices():
    """1x1 runs between 3x3 runs, channels_last: GEMMs write into interior channel slices."""
    x = torch.randn(4, 16, 13, 11).contiguous(memory_format=torch.channels_last)  # 572 rows: tiled
    shapes = [(5, 3), (20, 1), (7, 1), (4, 5), (9, 1)]
    weights = [torch.randn(c, 16, k, k) for c, k in shapes]
    biases = [torch.randn(c) if i % 2 else None for i, (c, _) in enumerate(shapes)]
    paddings = [k // 2 for _, k in shapes]
    for relu in (False, True):
        out = op(x, weights, biases, paddings, 1, relu)
        torch.testing.assert_close(
            out, unfused(x, weights, biases, paddings, 1, relu), rtol=1e-4, atol=1e-4
        )


# (x shape, [(C_out, kernel)]): weight-heavy 1x1 branches (C_in > N*H*W) next to a 3x3 one; in
# the large case the big 1x1 branches pass the CPU kernel's 2M multiply-accumulates for a
# convolution, the 7-channel one stays a GEMM.
WEIGHT_HEAVY_CASES = {
    "small": ((2, 40, 3, 4), [(6, 1), (9, 1), (3, 1), (5, 3)]),
    "large": ((2, 600, 3, 4), [(300, 1), (290, 1), (7, 1), (5, 3)]),
}


@pytest.mark.parametrize("size", list(WEIGHT_HEAVY_CASES))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_weight_heavy_pointwise_branches_into_slices(layout, size):
    """1x1 branches whose weights outweigh their output (C_in > N*H*W, as inception_4a-5b at batch
    1) are not merged: each is computed on its own and written into its channel slice (channels
    last: over all pixel rows; NCHW: one image at a time), beside a 3x3 run; float32 as a 1x1
    convolution on a one-pixel-high view of the input when large, else (and float64) a GEMM."""
    xs, shapes = WEIGHT_HEAVY_CASES[size]
    for dtype in (torch.float32, torch.float64):
        x = relayout(torch.randn(xs, dtype=dtype), layout)
        c_in = xs[1]
        weights = [torch.randn(c, c_in, k, k, dtype=dtype) / c_in**0.5 for c, k in shapes]
        biases = [
            torch.randn(c, dtype=dtype) if i != 1 else None for i, (c, _) in enumerate(shapes)
        ]
        paddings = [k // 2 for _, k in shapes]
        for relu in (False, True):
            out = op(x, weights, biases, paddings, 1, relu)
            torch.testing.assert_close(
                out, unfused(x, weights, biases, paddings, 1, relu), rtol=1e-4, atol=1e-4
            )


def test_bfloat16_matches_fp32_reference():
    x = torch.randn(2, 32, 9, 9)
    weights = [torch.randn(c, 32, k, k) * 0.1 for c, k in ((8, 1), (8, 1), (4, 3))]
    biases = [torch.randn(w.shape[0]) for w in weights]
    ref = unfused(x, weights, biases, [0, 0, 1], 1, True)
    for xl in (x, x.contiguous(memory_format=torch.channels_last)):
        out = op(xl.bfloat16(), [w.bfloat16() for w in weights], [b.bfloat16() for b in biases],
                 [0, 0, 1], 1, True)  # fmt: skip
        torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=5e-2)


def op_of_flat_params(branches, has_bias, paddings, stride, relu):
    """``f(x, *weights, *present_biases)`` calling branch_conv: the form gradcheck needs."""

    def fn(x, *params):
        weights, present = list(params[:branches]), iter(params[branches:])
        biases = [next(present) if has else None for has in has_bias]
        return op(x, weights, biases, paddings, stride, relu)

    return fn


def test_gradcheck_fp64_every_input():
    rng = random.Random(7)
    checked = 0
    while checked < 6:
        x, weights, biases, paddings, stride, relu = random_case(
            rng, torch.float64, requires_grad=True, max_batch=2
        )
        if x.shape[0] == 0 or x.shape[2] * x.shape[3] > 64:
            continue
        if checked % 2:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        present = [b for b in biases if b is not None]
        fn = op_of_flat_params(
            len(weights), [b is not None for b in biases], paddings, stride, relu
        )
        assert torch.autograd.gradcheck(fn, (x, *weights, *present))
        checked += 1


def test_backward_matches_unfused_and_handles_empty_batch():
    for n in (0, 3):
        x = torch.randn(n, 6, 8, 7, dtype=torch.float64, requires_grad=True)
        weights = [torch.randn(c, 6, k, k, dtype=torch.float64, requires_grad=True)
                   for c, k in ((3, 1), (2, 1), (4, 3))]  # fmt: skip
        biases = [None, torch.randn(2, dtype=torch.float64, requires_grad=True), None]
        grad = torch.randn(n, 9, 8, 7, dtype=torch.float64)
        ours = torch.autograd.grad(op(x, weights, biases, [0, 0, 1], 1, True),
                                   [x, *weights, biases[1]], grad)  # fmt: skip
        ref = torch.autograd.grad(unfused(x, weights, biases, [0, 0, 1], 1, True),
                                  [x, *weights, biases[1]], grad)  # fmt: skip
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b)


def _opcheck_cases():
    rng = random.Random(3)
    cases = []
    while len(cases) < 4:
        x, weights, biases, paddings, stride, relu = random_case(
            rng, torch.float64, requires_grad=True, max_batch=2
        )
        if x.shape[0] > 0:
            if len(cases) % 2:
                x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            cases.append((x, weights, biases, paddings, stride, relu))
    return cases


@pytest.mark.parametrize("case", _opcheck_cases(), ids=lambda c: f"{len(c[1])}branches")
def test_opcheck(case):
    torch.library.opcheck(op.default, case)
    x, weights, biases, paddings, stride, relu = case
    out = op(*case).detach()
    grad = torch.randn_like(out)
    plain = [w.detach() for w in weights]
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(
            backward_op.default, (grad, x.detach(), out, plain, paddings, stride, relu, mask)
        )


def test_mismatched_branches_raise_naming_the_index():
    x = torch.randn(1, 8, 10, 10)
    w1, w3 = torch.randn(4, 8, 1, 1), torch.randn(4, 8, 3, 3)
    with pytest.raises(RuntimeError, match=r"branch 2 produces a 8x8 output"):
        op(x, [w1, w3, w3], [None] * 3, [0, 1, 0], 1, False)
    with pytest.raises(RuntimeError, match=r"branch 1: expected weights\[1\] to take 8 input"):
        op(x, [w1, torch.randn(4, 7, 1, 1)], [None, None], [0, 0], 1, False)
    with pytest.raises(RuntimeError, match=r"branch 0: expected biases\[0\] to be a 1-D tensor"):
        op(x, [w1, w1], [torch.randn(5), None], [0, 0], 1, False)
    with pytest.raises(RuntimeError, match="expected paddings to hold one value per branch"):
        op(x, [w1, w1], [None, None], [0], 1, False)


def test_from_convs_is_exact_and_round_trips():
    convs = [nn.Conv2d(12, 5, 1), nn.Conv2d(12, 7, 3, padding=1), nn.Conv2d(12, 3, 5, padding=2)]
    merged = BranchConv2d.from_convs(convs, relu=True)
    x = torch.randn(2, 12, 9, 11)
    torch.testing.assert_close(merged(x), torch.cat([F.relu(c(x)) for c in convs], 1))
    for a, b in zip(merged.branches, convs, strict=True):
        assert (a.kernel_size, a.padding, a.stride) == (b.kernel_size, b.padding, b.stride)
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
        torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=0)
    merged(x).sum().backward()
    assert all(w.grad is not None for w in merged.weights)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (nn.Conv2d(10, 4, 3, padding=1), "branch 1 .*in_channels"),
        (nn.Conv2d(12, 4, 3, padding=1, stride=2), "branch 1 .*stride"),
        (nn.Conv2d(12, 4, 3, padding=0), "branch 1 .*output size"),
        (nn.Conv2d(12, 4, 3, padding=2, dilation=2), "branch 1 .*dilation"),
        (nn.Conv2d(12, 4, 3, padding=1, groups=2), "branch 1 .*groups"),
    ],
)
def test_from_convs_rejects_mismatched_geometry(bad, message):
    with pytest.raises(ValueError, match=message):
        BranchConv2d.from_convs([nn.Conv2d(12, 4, 1), bad], relu=False)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_as_conv_is_one_convolution_of_same_window_branches(bias, stride):
    torch.manual_seed(3)
    kernel, padding = (3, 1) if stride == 2 else (1, 0)
    convs = [nn.Conv2d(6, c, kernel, stride, padding, bias=bias) for c in (4, 3, 5)]
    merged = BranchConv2d.from_convs(convs, relu=False)
    conv = merged.as_conv()
    assert isinstance(conv, nn.Conv2d) and conv.out_channels == 12
    x = torch.randn(2, 6, 9, 8)
    torch.testing.assert_close(conv(x), torch.cat([c(x) for c in convs], 1))
    conv.weight.data.zero_()  # a copy: the merged module's own weights stay
    torch.testing.assert_close(merged(x), torch.cat([c(x) for c in convs], 1))


def test_as_conv_is_none_when_the_windows_differ():
    mixed = BranchConv2d.from_convs([nn.Conv2d(6, 4, 1), nn.Conv2d(6, 3, 3, padding=1)], False)
    assert mixed.as_conv() is None
