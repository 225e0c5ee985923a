"""deeprebirth::conv_pool against torch.nn.functional: a randomized grid, layouts, dtypes,
autograd (gradcheck), torch.library.opcheck, the Python wrappers and argument errors."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from aten_references import unfused_conv_pool as unfused
from op_cases import valid_conv_pool_kwargs
from torch import nn

from deeprebirth.ops import ConvPool2d, conv_pool

conv_pool_op = torch.ops.deeprebirth.conv_pool
TOLERANCE = {
    torch.float32: {"rtol": 1e-4, "atol": 1e-5},
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
}


def assert_matches_unfused(x, w, b, args) -> None:
    """The fused op against the unfused ATen sequence at x's dtype tolerance; a failure names the
    shapes and arguments."""
    torch.testing.assert_close(
        conv_pool_op(x, w, b, *args), unfused(x, w, b, *args), **TOLERANCE[x.dtype],
        msg=lambda m: f"x {tuple(x.shape)} w {tuple(w.shape)} {args}: {m}",
    )  # fmt: skip


def random_case(rng: random.Random, dtype=torch.float32, max_size: int = 64):
    """(x, w, b, args) for one random valid configuration of the issue's grid."""
    while True:
        groups = rng.choice([1, 1, 1, 2, 3, 4])
        cin = groups * rng.randint(1, max(1, 64 // groups) if rng.random() < 0.2 else 8)
        cout = groups * rng.randint(1, 8 if rng.random() < 0.8 else max(1, 64 // groups))
        kh, kw = rng.randint(1, 7), rng.choice([None, rng.randint(1, 7)])
        kw = kh if kw is None else kw
        stride = [rng.randint(1, 3), rng.randint(1, 3)]
        dilation = [rng.choice([1, 1, 2]), rng.choice([1, 1, 2])]
        padding = [rng.randint(0, kh // 2 + 1), rng.randint(0, kw // 2 + 1)]
        h, w_ = rng.randint(1, max_size), rng.randint(1, max_size)
        pk = [rng.randint(1, 4), rng.randint(1, 4)]
        ps = [rng.randint(1, 3), rng.randint(1, 3)]
        pp = [rng.randint(0, pk[0] // 2), rng.randint(0, pk[1] // 2)]
        conv_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        conv_w = (w_ + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        if (
            min(conv_h, conv_w) < 1
            or min(conv_h + 2 * pp[0] - pk[0], conv_w + 2 * pp[1] - pk[1]) < 0
        ):
            continue  # no convolution or pooled output: an error case, covered below
        n = rng.randint(0, 4)
        x = torch.randn(n, cin, h, w_, dtype=dtype)
        w = torch.randn(cout, cin // groups, kh, kw, dtype=dtype) / (cin // groups * kh * kw) ** 0.5
        b = torch.randn(cout, dtype=dtype) if rng.random() < 0.7 else None
        pool, ceil, relu = rng.choice(["max", "avg"]), rng.random() < 0.5, rng.random() < 0.5
        args = (stride, padding, dilation, groups, pool, pk, ps, pp, ceil, relu)
        return x, w, b, args


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_grid_matches_unfused(dtype):
    rng = random.Random(3 if dtype == torch.float32 else 4)
    for _ in range(120 if dtype == torch.float32 else 40):
        x, w, b, args = random_case(rng, dtype)
        assert_matches_unfused(x, w, b, args)


# (x shape, w shape, stride, padding): a float32 layer each convolution of the CPU kernel takes.
LAYER_PER_ALGORITHM = {
    "direct": ((2, 3, 64, 64), (16, 3, 7, 7), 2, 3),
    "winograd": ((1, 16, 40, 40), (32, 16, 3, 3), 1, 1),
    "onednn": ((1, 8, 40, 40), (20, 8, 5, 5), 1, 2),
}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("algorithm", list(LAYER_PER_ALGORITHM))
def test_max_pooling_propagates_nan_and_inf_like_aten(algorithm, layout):
    """NaN and infinities in the input reach the pooled output as in the unfused sequence (ATen's
    max_pool2d propagates NaN): the float32 max-pooling epilogue, which takes the plain max, hands
    window rows holding a NaN to the exact epilogue. Winograd spreads a non-finite input over its
    2x2 output block and turns inf - inf into NaN (documented in conv_pool): there, every output
    the reference has non-finite is non-finite and the finite ones match. Some outputs must be NaN
    and some finite."""
    xs, ws, stride, padding = LAYER_PER_ALGORITHM[algorithm]
    torch.manual_seed(5)
    x = torch.randn(xs)
    x[0, 0, xs[2] // 2, xs[3] // 3] = float("nan")
    x[0, -1, xs[2] // 4, -2] = float("inf")
    x[-1, 0, -3, 1] = -float("inf")
    x = x.contiguous(memory_format=layout)
    w = torch.randn(ws) / (ws[1] * ws[2] * ws[3]) ** 0.5
    b = torch.randn(ws[0])
    for relu in (True, False):
        args = ([stride] * 2, [padding] * 2, [1, 1], 1, "max", [3, 3], [2, 2], [0, 0], True, relu)
        fused, reference = conv_pool_op(x, w, b, *args), unfused(x, w, b, *args)
        assert reference.isnan().any() and reference.isfinite().any()
        if algorithm == "winograd":
            finite = fused.isfinite()
            assert not (finite & ~reference.isfinite()).any()
            assert finite.sum() >= 0.9 * reference.isfinite().sum()  # the spread is local
            torch.testing.assert_close(fused[finite], reference[finite], **TOLERANCE[torch.float32])
        else:
            torch.testing.assert_close(fused, reference, equal_nan=True, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("threads", [1, 2])
def test_winograd_layers_match_unfused(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_winograd_layers(seed=11 + threads)
    finally:
        torch.set_num_threads(previous)


def check_winograd_layers(seed: int, cases: int = 24) -> None:
    """float32 3x3 stride-1 layers with enough channels take the Winograd F(2x2, 3x3) convolution
    on the CPU: odd and even sizes (partial 2x2 output blocks), every padding, batch 0-3 and images
    large enough for several bands per segment, both layouts."""
    rng = random.Random(seed)
    sizes = [(rng.randint(0, 3), rng.randint(1, 40), rng.randint(1, 40)) for _ in range(cases)]
    sizes += [(1, 97, 61), (3, 75, 66), (2, 120, 31)]  # over 2 MB of convolution output: banded
    for n, h, w_ in sizes:
        cin, cout, pad = rng.randint(8, 40), rng.randint(16, 80), rng.randint(0, 2)
        if min(h, w_) + 2 * pad < 3:
            continue
        layout = rng.choice([torch.contiguous_format, torch.channels_last])
        x = torch.randn(n, cin, h, w_).contiguous(memory_format=layout)
        w = torch.randn(cout, cin, 3, 3) / (9 * cin) ** 0.5
        b = torch.randn(cout) if rng.random() < 0.7 else None
        conv_size = min(h, w_) + 2 * pad - 2
        pk = rng.randint(1, min(3, conv_size))
        args = ([1, 1], [pad, pad], [1, 1], 1, rng.choice(["max", "avg"]), [pk, pk],
                [rng.randint(1, 2)] * 2, [rng.randint(0, pk // 2)] * 2, rng.random() < 0.5,
                rng.random() < 0.5)  # fmt: skip
        assert_matches_unfused(x, w, b, args)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("in_channels, out_channels", [(64, 200), (48, 100), (96, 192)])
def test_winograd_passes_over_channel_groups_match_unfused(threads, in_channels, out_channels):
    """A transformed weight over 256 KiB on a small input runs in passes over groups of output
    channels (64 at a time, the last group partial: 200 = 3 x 64 + 8, 100 = 64 + 36), each
    writing its channels of the output, in both layouts and with a channels-last weight."""
    torch.set_num_threads(threads)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(1, in_channels, 23, 30).contiguous(memory_format=layout)
        w = torch.randn(out_channels, in_channels, 3, 3) / (9 * in_channels) ** 0.5
        w = w.contiguous(memory_format=layout)
        args = ([1, 1], [1, 1], [1, 1], 1, "max", [3, 3], [2, 2], [0, 0], True, True)
        assert_matches_unfused(x, w, torch.randn(out_channels), args)
        assert_matches_unfused(x, w, None, args[:4] + ("avg",) + args[5:])


def check_direct_layers(seed: int, threads: int, cases: int = 30) -> None:
    """float32 ungrouped, undilated layers with at most 4 input channels (first layers) take the
    direct convolution on the CPU: random kernels, strides, paddings and output channels (not
    multiples of 16 too), batch 0-4, images large enough for several bands and segments per
    image, every layout, max/avg, ceil and relu toggled, against the unfused ATen sequence."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    try:
        for case in range(cases):
            size = 160 if case % 5 == 0 else 40  # 160: several bands per segment
            n, h, w_ = rng.randint(0, 4), rng.randint(1, size), rng.randint(1, size)
            cin, cout = rng.randint(1, 4), rng.choice([1, 5, 16, 17, 40, 64, 80])
            kh, kw = rng.randint(1, 7), rng.randint(1, 7)
            stride, padding = [rng.randint(1, 3), rng.randint(1, 3)], [kh // 2, kw // 2]
            conv_h = (h + 2 * padding[0] - kh) // stride[0] + 1
            conv_w = (w_ + 2 * padding[1] - kw) // stride[1] + 1
            if min(conv_h, conv_w) < 1:
                continue
            pk = [rng.randint(1, min(3, conv_h)), rng.randint(1, min(3, conv_w))]
            pp = [rng.randint(0, pk[0] // 2), rng.randint(0, pk[1] // 2)]
            layout = rng.choice([torch.contiguous_format, torch.channels_last, None])
            if layout is None:  # every dimension of x non-contiguous
                x = torch.randn(n, cin * 2, h + 3, w_ * 2)[:, ::2, 1:-2, ::2]
            else:
                x = torch.randn(n, cin, h, w_).contiguous(memory_format=layout)
            w = torch.randn(cout, cin, kh, kw) / (cin * kh * kw) ** 0.5
            b = torch.randn(cout) if rng.random() < 0.7 else None
            ps = [rng.randint(1, 2), rng.randint(1, 2)]
            if size > 40 and min(conv_h, conv_w) >= 3:  # overlapping windows across bands
                pk, ps = [3, 3], [2, 2]
            args = (stride, padding, [1, 1], 1, rng.choice(["max", "avg"]), pk, ps, pp,
                    rng.random() < 0.5, rng.random() < 0.5)  # fmt: skip
            assert_matches_unfused(x, w, b, args)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
def test_direct_layers_match_unfused(threads):
    check_direct_layers(seed=21 + threads, threads=threads)


# (switch, x shape, w shape, stride, padding): a layer each algorithm takes, and the switch that
# sends it to oneDNN instead.
SWITCHED_LAYERS = [
    ("DEEPREBIRTH_CONV_POOL_WINOGRAD", (1, 64, 56, 56), (192, 64, 3, 3), 1, 1),  # GoogLeNet conv2
    ("DEEPREBIRTH_CONV_POOL_DIRECT", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3),  # GoogLeNet conv1
]


@pytest.mark.parametrize("layer", SWITCHED_LAYERS, ids=lambda layer: layer[0].rsplit("_", 1)[1])
def test_convolution_algorithm_can_be_switched_off(layer, tmp_path):
    """<switch>=0 (read when the library loads) sends the layer to oneDNN instead: both results
    match the unfused sequence, and they differ in rounding, which shows that the switch changes
    the algorithm."""
    switch, xs, ws, stride, padding = layer
    torch.manual_seed(0)
    x = torch.randn(xs).contiguous(memory_format=torch.channels_last)
    w = torch.randn(ws) / (ws[1] * ws[2] * ws[3]) ** 0.5
    b = torch.randn(ws[0])
    args = ([stride] * 2, [padding] * 2, [1, 1], 1, "max", [3, 3], [2, 2], [0, 0], True, True)
    torch.save((x, w, b, args), tmp_path / "case.pt")
    script = (
        "import sys, torch, deeprebirth.ops\n"
        "x, w, b, args = torch.load(sys.argv[1])\n"
        "torch.save(torch.ops.deeprebirth.conv_pool(x, w, b, *args), sys.argv[2])\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "case.pt"), str(tmp_path / "out.pt")],
        env={**os.environ, switch: "0"}, check=True, timeout=120,
    )  # fmt: skip
    onednn = torch.load(tmp_path / "out.pt")
    fused = conv_pool_op(x, w, b, *args)
    reference = unfused(x, w, b, *args)
    torch.testing.assert_close(fused, reference, **TOLERANCE[torch.float32])
    torch.testing.assert_close(onednn, reference, **TOLERANCE[torch.float32])
    assert not torch.equal(fused, onednn)


# Large enough that the CPU kernel splits each image into several row bands (tiles of ~512 KB).
BANDED_CASES = [
    ((2, 3, 224, 224), (64, 3, 7, 7), 2, 3, "max", (3, 2, 0), True, True),  # GoogLeNet conv1
    ((1, 64, 56, 56), (192, 64, 3, 3), 1, 1, "max", (3, 2, 0), True, True),  # GoogLeNet conv2
    ((1, 3, 224, 224), (64, 3, 7, 7), 2, 3, "max", (3, 2, 1), False, True),  # ResNet-50 stem
    ((1, 8, 131, 97), (128, 8, 5, 3), 1, 2, "avg", (3, 2, 1), True, True),  # avg + relu, odd
    ((1, 8, 131, 97), (128, 8, 3, 3), 1, 1, "avg", (2, 2, 0), False, False),  # avg, bias, no relu
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("case", BANDED_CASES, ids=lambda c: f"x{c[0]}-{c[4]}")
def test_banded_layouts_match_unfused(case, layout):
    xs, ws, s, p, pool, (pk, ps, pp), ceil, relu = case
    x = torch.randn(xs)
    w = torch.randn(ws) / (ws[1] * ws[2] * ws[3]) ** 0.5
    b = torch.randn(ws[0])
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # every dimension of x non-contiguous
        x = torch.randn(xs[0], xs[1] * 2, xs[2] + 3, xs[3] * 2)[:, ::2, 1:-2, ::2]
        w = torch.randn(ws[0] * 2, *ws[1:])[::2] / (ws[1] * ws[2] * ws[3]) ** 0.5
        b = torch.randn(ws[0] * 3)[::3]
    args = ([s, s], [p, p], [1, 1], 1, pool, [pk, pk], [ps, ps], [pp, pp], ceil, relu)
    out = conv_pool_op(x, w, b, *args)
    torch.testing.assert_close(out, unfused(x, w, b, *args), rtol=1e-4, atol=1e-5)
    expected_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=expected_format)


# (x shape, w shape, stride, padding, dilation, groups, pool (kernel, stride, padding)): images
# with over 2 MB of convolution output, so the CPU kernel bands them.
SCHEDULE_CASES = [
    ((1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, 1, (3, 2, 0)),  # GoogLeNet conv1
    ((1, 16, 101, 99), (128, 8, 3, 3), 1, 2, 2, 2, (3, 2, 1)),  # groups, dilation, odd sizes
    ((3, 8, 120, 80), (96, 8, 5, 5), 1, 2, 1, 1, (2, 2, 0)),  # more images than threads
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", SCHEDULE_CASES, ids=lambda c: f"x{c[0]}-g{c[5]}")
def test_band_schedules_match_unfused(case, dtype, threads):
    """Fewer images than threads: bands one after another, each on every thread; otherwise each
    thread takes its own bands. float32 bands share one weight packed by oneDNN (GoogLeNet conv1:
    the direct convolution, each thread its own bands at any batch), float64 ones use conv2d."""
    xs, ws, s, p, d, groups, (pk, ps, pp) = case
    torch.set_num_threads(threads)
    x = torch.randn(xs, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(ws, dtype=dtype) / (ws[1] * ws[2] * ws[3]) ** 0.5
    b = torch.randn(ws[0], dtype=dtype)
    for pool, relu in [("max", True), ("avg", False)]:
        args = ([s, s], [p, p], [d, d], groups, pool, [pk, pk], [ps, ps], [pp, pp], True, relu)
        torch.testing.assert_close(
            conv_pool_op(x, w, b, *args), unfused(x, w, b, *args), **TOLERANCE[dtype]
        )


def test_bfloat16_matches_float32_reference():
    rng = random.Random(5)
    for _ in range(5):
        x, w, b, args = random_case(rng, torch.float32, max_size=32)
        as_bf16 = [t.bfloat16() if t is not None else None for t in (x, w, b)]
        out = conv_pool_op(*as_bf16, *args)
        ref = unfused(*[t.float() if t is not None else None for t in as_bf16], *args)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref, **TOLERANCE[torch.bfloat16])


GRAD_CASES = [  # x shape, w shape, stride, padding, dilation, groups, pool, pk, ps, pp, ceil, relu
    ((2, 4, 9, 8), (6, 2, 3, 3), 1, 1, 1, 2, "max", 2, 2, 0, True, True),
    ((1, 3, 11, 10), (4, 3, 3, 2), 2, 1, 1, 1, "avg", 3, 2, 1, False, True),
    ((2, 2, 8, 9), (3, 2, 2, 3), 1, 0, 2, 1, "avg", 2, 1, 0, True, False),
    ((1, 3, 10, 7), (5, 3, 3, 3), 1, 2, 1, 1, "max", 3, 2, 1, False, False),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"x{c[0]}-{c[6]}")
def test_gradcheck(case, bias):
    xs, ws, s, p, d, g, pool, pk, ps, pp, ceil, relu = case
    x = torch.randn(xs, dtype=torch.float64, requires_grad=True)
    w = torch.randn(ws, dtype=torch.float64, requires_grad=True)
    b = torch.randn(ws[0], dtype=torch.float64, requires_grad=True) if bias else None
    args = ([s, s], [p, p], [d, d], g, pool, [pk, pk], [ps, ps], [pp, pp], ceil, relu)
    inputs = (x, w, b) if bias else (x, w)

    def fn(*tensors):
        return conv_pool_op(tensors[0], tensors[1], tensors[2] if bias else None, *args)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_gradcheck_full_jacobian():
    """Full (not fast-mode) gradcheck on a tiny case."""
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    args = ([1, 1], [1, 1], [1, 1], 1, "max", [2, 2], [2, 2], [1, 1], True, True)
    assert torch.autograd.gradcheck(lambda *t: conv_pool_op(*t, *args), (x, w, b))


def test_gradients_match_unfused_autograd_over_several_bands():
    """Large enough that the CPU backward recomputes the convolution in several row bands."""
    x = torch.randn(2, 3, 120, 100, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(64, 3, 5, 5, dtype=torch.float64) / 75**0.5).requires_grad_()
    b = torch.randn(64, dtype=torch.float64, requires_grad=True)
    for pool, relu in [("max", True), ("avg", True), ("avg", False)]:
        args = ([1, 1], [2, 2], [1, 1], 1, pool, [3, 3], [2, 2], [1, 1], True, relu)
        grad = torch.randn_like(unfused(x, w, b, *args))
        fused_grads = torch.autograd.grad(conv_pool_op(x, w, b, *args), (x, w, b), grad)
        ref_grads = torch.autograd.grad(unfused(x, w, b, *args), (x, w, b), grad)
        for got, want in zip(fused_grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


OPCHECK_CASES = [
    ((2, 4, 10, 9), (6, 4, 3, 3), None, "max", True, torch.contiguous_format),
    ((1, 4, 12, 11), (4, 2, 3, 1), 4, "avg", False, torch.channels_last),
]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=["max-nchw", "avg-nhwc"])
def test_opcheck(case):
    xs, ws, bias_size, pool, relu, layout = case
    x = torch.randn(xs).contiguous(memory_format=layout).requires_grad_()
    w = torch.randn(ws).requires_grad_()
    groups = xs[1] // ws[1]
    b = torch.randn(ws[0], requires_grad=True) if bias_size else None
    args = (x, w, b, [1, 1], [1, 1], [1, 1], groups, pool, [2, 2], [2, 2], [0, 0], True, relu)
    torch.library.opcheck(
        conv_pool_op,
        args,
        test_utils=(
            "test_schema", "test_autograd_registration", "test_faketensor",
            "test_aot_dispatch_dynamic",
        ),
    )  # fmt: skip


def test_backward_opcheck():
    x, w, b = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    args = ([1, 1], [1, 1], [1, 1], 1, "max", [2, 2], [2, 2], [0, 0], False, True)
    grad = torch.randn(2, 4, 4, 4)
    torch.library.opcheck(
        torch.ops.deeprebirth.conv_pool_backward,
        (grad, x, w, b, *args),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_wrapper_and_module_match_layers():
    conv, pool = nn.Conv2d(6, 10, 3, stride=2, padding=1, groups=2), nn.AvgPool2d(3, 2, 1, True)
    fused = ConvPool2d.from_modules(conv, pool, relu=True)
    x = torch.randn(3, 6, 29, 30)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), pool(F.relu(conv(x))), rtol=1e-4, atol=1e-5)
        via_function = conv_pool(
            x, conv.weight, conv.bias, 2, 1, groups=2, pool="avg", pool_kernel=3, pool_stride=2,
            pool_padding=1, ceil_mode=True, relu=True,
        )  # fmt: skip
        torch.testing.assert_close(via_function, fused(x))


def test_module_finetunes_through_the_op():
    fused = ConvPool2d(3, 4, 3, padding=1, pool="max", pool_kernel=2)
    x = torch.randn(2, 3, 8, 8)
    loss = fused(x).square().sum()
    loss.backward()
    assert fused.weight.grad is not None and fused.weight.grad.abs().sum() > 0
    assert fused.bias.grad is not None and fused.bias.grad.shape == (4,)


BAD_INPUTS = {  # override -> text the RuntimeError must contain
    "x": (dict(x=torch.randn(4, 8, 8)), "x"),
    "w": (dict(w=torch.randn(4, 4, 3)), "w"),
    "b": (dict(b=torch.randn(3)), "b"),
    "groups": (dict(groups=3), "groups"),
    "stride": (dict(stride=[0, 1]), "stride"),
    "padding": (dict(padding=[-1, 0]), "padding"),
    "dilation": (dict(dilation=[1, 0]), "dilation"),
    "pool": (dict(pool="median"), "pool"),
    "pool_kernel": (dict(pool_kernel=[0, 2]), "pool_kernel"),
    "pool_stride": (dict(pool_stride=[2, 0]), "pool_stride"),
    "pool_padding": (dict(pool_padding=[2, 0]), "pool_padding"),
    "dtype": (dict(b=torch.randn(4, dtype=torch.float64)), "b"),
}


@pytest.mark.parametrize("argument", sorted(BAD_INPUTS))
def test_bad_input_raises_naming_the_argument(argument):
    overrides, name = BAD_INPUTS[argument]
    with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
        conv_pool_op(**valid_conv_pool_kwargs(**overrides))
