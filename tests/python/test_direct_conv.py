"""deeprebirth::direct_conv, direct_conv_pack and small_conv2d against torch.nn.functional.conv2d:
a randomized grid, layouts, thread counts, the kernel choice, gradients, opcheck, TorchScript
freezing and argument errors."""

from __future__ import annotations

import os
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from isa_helpers import run_with_cpu_isa
from onednn_names import as_onednn

from deeprebirth.ops import (
    direct_conv,
    direct_conv_isa,
    direct_conv_pack,
    small_conv2d,
    small_conv2d_cat,
)

needs_mkldnn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="the packed path needs oneDNN"
)
direct_conv_op = torch.ops.deeprebirth.direct_conv
small_conv2d_op = torch.ops.deeprebirth.small_conv2d


def _reference(x, w, b, stride, padding, relu):
    y = F.conv2d(x, w, b, stride, padding)
    return F.relu(y) if relu else y


def _ops_run(fn) -> list[str]:
    """The names of the operators calling ``fn`` ran, in order (the profiler)."""
    with torch.profiler.profile() as prof:
        fn()
    return [as_onednn(event.name) for event in prof.events()]


def _ran_direct_kernel(fn) -> bool:
    """Whether calling ``fn`` ran deeprebirth::direct_conv or direct_conv_cat."""
    kernels = ("deeprebirth::direct_conv", "deeprebirth::direct_conv_cat")
    return any(name in kernels for name in _ops_run(fn))


def test_pack_layout_puts_channel_c_in_block_c_div_16() -> None:
    w = torch.randn(20, 3, 2, 5)
    packed = direct_conv_pack(w)
    assert packed.shape == (2, 3, 2, 5, 16)
    for c in (0, 15, 16, 19):
        torch.testing.assert_close(packed[c // 16, ..., c % 16], w[c], rtol=0, atol=0)
    assert not packed[1, ..., 4:].any()  # lanes past C_out are zero


def check_random_grid(seed: int, threads: int, cases: int = 60) -> None:
    """direct_conv against conv2d on ``cases`` random layers (kernels 1-7, strides 1-4, padding,
    odd sizes, batch 0-2, C_out 1-70 so the last channel block is partial)."""
    rng = random.Random(seed)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(cases):
            kh, kw = rng.randint(1, 7), rng.randint(1, 7)
            stride = [rng.randint(1, 4), rng.randint(1, 4)]
            padding = [rng.randint(0, kh // 2 + 1), rng.randint(0, kw // 2 + 1)]
            h = rng.randint(max(1, kh - 2 * padding[0]), 33)
            w_ = rng.randint(max(1, kw - 2 * padding[1]), 33)
            cin, cout = rng.randint(1, 40), rng.randint(1, 70)
            x = torch.randn(rng.randint(0, 3), cin, h, w_)
            w = torch.randn(cout, cin, kh, kw) / (cin * kh * kw) ** 0.5
            b = rng.choice([None, torch.randn(cout)])
            relu = rng.random() < 0.5
            out = direct_conv(x, direct_conv_pack(w), b, cout, stride, padding, relu)
            assert out.is_contiguous()
            torch.testing.assert_close(
                out, _reference(x, w, b, stride, padding, relu), rtol=1e-4, atol=1e-5
            )
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", [1, 2])
def test_random_grid_matches_conv2d(threads: int) -> None:
    check_random_grid(seed=threads, threads=threads)


def test_the_kernel_uses_the_widest_instruction_set_of_the_cpu() -> None:
    forcing = ("DEEPREBIRTH_CPU_ISA", "DEEPREBIRTH_DIRECT_CONV_ISA", "ATEN_CPU_CAPABILITY")
    if any(name in os.environ for name in forcing):
        pytest.skip("an instruction set is forced by the environment")
    expected = {"AVX512": "avx512", "AVX2": "avx2", "DEFAULT": "sse2"}  # ATen's own detection
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in expected:
        pytest.skip(f"ATen reports {capability}")
    assert direct_conv_isa() == expected[capability]


@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse2"])
def test_every_instruction_set_matches_conv2d(isa: str) -> None:
    # Each x86-64 variant the CPU runs, chosen by DEEPREBIRTH_CPU_ISA in a fresh process (the
    # choice is made once per process) for every per-ISA path alike: direct_conv's rows, conv_pool's
    # direct and Winograd convolutions, max- and average-pooling epilogues, channel splits of
    # channels-last input and transposes.
    run_with_cpu_isa(
        isa,
        "import torch, test_direct_conv as t, test_conv_pool as c; "
        "t.check_random_grid(seed=11, threads=2, cases=40); "
        "c.check_direct_layers(seed=11, threads=2); "
        "torch.set_num_threads(2); c.check_winograd_layers(seed=11, cases=8)",
    )


# Every layer of the Fashion-MNIST GoogLeNet student (64x64 input) of configs/ has this form.
FASHION_MNIST_LAYERS = [
    ((1, 1, 64, 64), (16, 1, 7, 7), 4, 3),  # conv1 after streamline slimming
    ((1, 16, 16, 16), (48, 16, 3, 3), 2, 1),  # conv2
    ((1, 48, 8, 8), (12, 48, 1, 1), 1, 0),  # a reducer
    ((1, 2, 8, 8), (13, 2, 5, 5), 1, 2),  # a 5x5 branch
    ((1, 24, 2, 2), (192, 24, 3, 3), 1, 1),  # inception_5b's 3x3 branch
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("layer", FASHION_MNIST_LAYERS, ids=lambda layer: str(layer[1]))
def test_network_layers_in_every_layout(layer, layout: str) -> None:
    xs, ws, stride, padding = layer
    x = torch.randn(xs)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(xs[0], xs[1], xs[2], 2 * xs[3])[..., ::2]
    w, b = torch.randn(ws) / (ws[1] * ws[2] * ws[3]) ** 0.5, torch.randn(ws[0])
    out = direct_conv(x, direct_conv_pack(w), b, ws[0], stride, padding, relu=True)
    torch.testing.assert_close(
        out, _reference(x, w, b, stride, padding, True), rtol=1e-4, atol=1e-5
    )


@torch.no_grad()
def test_small_conv2d_runs_the_direct_kernel_only_where_it_pays() -> None:
    """On weights that are trainable parameters (no packed path): direct for small ungrouped
    undilated float32 calls; conv2d for calls of max_macs or more, 1x1 calls over
    max_1x1_pixels output pixels, groups, dilation, float64 and gradients. Every call equals
    conv2d (+ ReLU)."""
    x = torch.randn(1, 8, 8, 8)
    w3, w1 = torch.randn(16, 8, 3, 3), torch.randn(16, 8, 1, 1)
    macs_3x3 = 16 * 8 * 8 * 8 * 9
    cases = [  # (x, w, padding, dilation, groups, max_macs, max_1x1_pixels, direct?)
        (x, w3, 1, 1, 1, macs_3x3 + 1, 64, True),
        (x, w3, 1, 1, 1, macs_3x3, 64, False),
        (x, w1, 0, 1, 1, 1 << 22, 64, True),  # 8x8 = 64 output pixels
        (x, w1, 0, 1, 1, 1 << 22, 63, False),
        (x, w3, 2, 2, 1, 1 << 22, 64, False),  # dilated
        (x, torch.randn(16, 4, 3, 3), 1, 1, 2, 1 << 22, 64, False),  # grouped
        (x.double(), w3.double(), 1, 1, 1, 1 << 22, 64, False),
    ]
    for xi, w, p, d, g, max_macs, max_pixels, direct in cases:
        b = torch.randn(w.shape[0], dtype=w.dtype)
        packed = direct_conv_pack(w)
        w = w.requires_grad_()

        def call(xi=xi, w=w, b=b, packed=packed, p=p, d=d, g=g, mm=max_macs, mp=max_pixels):
            return small_conv2d(xi, w, packed, b, 1, p, d, g, True, mm, mp)

        assert _ran_direct_kernel(call) == direct, (tuple(w.shape), p, d, g, max_macs)
        expected = F.relu(F.conv2d(xi, w, b, 1, p, d, g))
        torch.testing.assert_close(call(), expected, rtol=1e-4, atol=1e-5)


def test_small_conv2d_output_keeps_the_input_layout() -> None:
    """Like conv2d, the direct kernel's calls give channels_last outputs for channels_last inputs
    (a channel slice of a channels_last tensor included, as a merged branch's view is) and NCHW
    outputs for NCHW inputs; the values equal conv2d's. The _cat form follows its first input."""
    cl = torch.channels_last
    wide = torch.randn(1, 24, 8, 8).contiguous(memory_format=cl)
    w, b = torch.randn(16, 8, 3, 3).requires_grad_(), torch.randn(16)
    packed = direct_conv_pack(w.detach())
    cases = [  # (input, the layout conv2d gives it)
        (wide[:, 8:16], cl),
        (wide[:, :8].contiguous(memory_format=cl), cl),
        (wide[:, :8].contiguous(), torch.contiguous_format),
    ]
    with torch.no_grad():  # a parameter (no packed path) that needs no gradient: the direct kernel
        for x, layout in cases:
            y = small_conv2d(x, w, packed, b, 1, 1, 1, 1, True, 1 << 22, 64)
            assert _ran_direct_kernel(lambda x=x: small_conv2d(x, w, packed, b, 1, 1, 1, 1, True))
            assert y.is_contiguous(memory_format=layout)
            assert F.conv2d(x, w, b, 1, 1).is_contiguous(memory_format=layout)
            torch.testing.assert_close(y, F.relu(F.conv2d(x, w, b, 1, 1)), rtol=1e-4, atol=1e-5)
        xs = [wide[:, :8], wide[:, 8:16]]
        y = small_conv2d_cat(xs, [w, w], [packed, packed], [b, b], [1, 1], [1, 1], True)
        assert _ran_direct_kernel(
            lambda: small_conv2d_cat(xs, [w, w], [packed, packed], [b, b], [1, 1], [1, 1], True)
        )
        assert y.is_contiguous(memory_format=cl) and not y.is_contiguous()
        expected = torch.cat([F.relu(F.conv2d(x, w, b, 1, 1)) for x in xs], 1)
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


def _kernels_run(fn) -> list[str]:
    """The convolution kernels calling ``fn`` ran, in order."""
    kernels = ("deeprebirth::direct_conv", "mkldnn::_convolution_pointwise")
    return [name for name in _ops_run(fn) if name in kernels]


@needs_mkldnn
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@torch.no_grad()
def test_frozen_small_layers_time_the_direct_kernel_against_onednn(layout: str) -> None:
    """A weight that is not a trainable parameter (a frozen constant): a layer the direct kernel
    may compute (5x5: Winograd does not apply) times it against oneDNN on the first call of a
    shape, then runs the one it kept, alone; with the direct kernel ruled out (max_macs 0) only
    oneDNN runs, also after a decision for the direct kernel. Values as conv2d's; the output
    channels_last (oneDNN's layout) whichever kernel won, so the timing never changes it."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for shape in ((1, 3, 4, 4), (1, 12, 14, 14)):  # the first tiny: the direct kernel should win
        x = torch.randn(*shape).contiguous(memory_format=fmt)
        w, b = torch.randn(16, shape[1], 5, 5), torch.randn(16)
        packed = direct_conv_pack(w)

        def call(max_macs=1 << 22, x=x, w=w, b=b, packed=packed):
            return small_conv2d(x, w, packed, b, 1, 2, 1, 1, True, max_macs)

        first = _kernels_run(call)
        assert set(first) == {"deeprebirth::direct_conv", "mkldnn::_convolution_pointwise"}
        assert len(first) >= 8, first  # one untimed and three timed calls of each, then the call
        kept = _kernels_run(call)
        assert len(kept) == 1 and kept[0] == first[-1], (first, kept)
        expected = F.relu(F.conv2d(x, w, b, 1, 2))
        for y in (call(), call(max_macs=0)):
            assert y.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
        assert _kernels_run(lambda: call(max_macs=0)) == ["mkldnn::_convolution_pointwise"]


@needs_mkldnn
def test_inference_tensor_weights_skip_the_kept_copies() -> None:
    """Weights made under torch.inference_mode have no version counter, so no kept packed copy
    could tell their updates: small_conv2d runs them without one and sees an in-place change."""
    with torch.inference_mode():
        x, w = torch.randn(1, 8, 9, 9), torch.randn(16, 8, 3, 3)
        for _ in range(2):
            y = small_conv2d(x, w, direct_conv_pack(w), None, 1, 1, max_macs=0)
            torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1), rtol=1e-4, atol=1e-5)
            w.mul_(-2)


def test_small_conv2d_gradients_go_through_conv2d() -> None:
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    packed = direct_conv_pack(w.detach())
    torch.autograd.gradcheck(lambda *t: small_conv2d(t[0], t[1], packed, t[2], 1, 1), (x, w, b))
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    y = small_conv2d(x32, w32, direct_conv_pack(w32.detach()), None, 1, 1, relu=True)
    assert not _ran_direct_kernel(
        lambda: small_conv2d(x32, w32, direct_conv_pack(w32.detach()), None, 1, 1)
    )
    y.sum().backward()
    x_ref, w_ref = x32.detach().requires_grad_(), w32.detach().requires_grad_()
    F.relu(F.conv2d(x_ref, w_ref, None, 1, 1)).sum().backward()
    torch.testing.assert_close(x32.grad, x_ref.grad)
    torch.testing.assert_close(w32.grad, w_ref.grad)


def test_direct_conv_refuses_inputs_that_need_a_gradient() -> None:
    x, w = torch.randn(1, 3, 5, 5, requires_grad=True), torch.randn(4, 3, 3, 3)
    with pytest.raises(RuntimeError, match="direct_conv: is an inference kernel"):
        direct_conv(x, direct_conv_pack(w), None, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            direct_conv(x, direct_conv_pack(w), None, 4), F.conv2d(x, w), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"x": torch.randn(1, 3, 5)}, "expected x to be a 4-D tensor"),
        ({"x": torch.randn(1, 3, 5, 5, dtype=torch.float64)}, "packed_w"),
        ({"packed_w": torch.randn(1, 3, 3, 3)}, "expected packed_w to be direct_conv_pack's"),
        ({"x": torch.randn(1, 2, 5, 5)}, "expected x to have packed_w.size\\(1\\) = 3 channels"),
        ({"out_channels": 17}, "expected out_channels in \\(0, 16\\]"),
        ({"b": torch.randn(5)}, "expected b to be a 1-D tensor of out_channels = 4"),
        ({"stride": [0, 1]}, "stride"),
        ({"padding": [-1, 0]}, "padding"),
        ({"x": torch.randn(1, 3, 2, 2)}, "larger than the padded input"),
    ],
)
def test_bad_arguments_name_the_argument(change: dict, message: str) -> None:
    args = {
        "x": torch.randn(1, 3, 5, 5),
        "packed_w": direct_conv_pack(torch.randn(4, 3, 3, 3)),
        "b": torch.randn(4),
        "out_channels": 4,
        "stride": [1, 1],
        "padding": [0, 0],
        "relu": False,
    }
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        direct_conv_op(*args.values())


def test_float64_is_refused_by_the_kernel_with_its_dtype_named() -> None:
    x, w = (
        torch.randn(1, 3, 5, 5, dtype=torch.float64),
        torch.randn(4, 3, 3, 3, dtype=torch.float64),
    )
    with pytest.raises(RuntimeError, match="expected float32 tensors on the CPU.*Double"):
        direct_conv_op(x, direct_conv_pack(w), None, 4, [1, 1], [0, 0], False)


# opcheck's schema check reads the storage of every tensor an operator makes, which oneDNN's
# opaque packed weights have none of: its small_conv2d checks run with oneDNN off (the direct
# kernel), and fake and traced tensors must never reach the packed path at all.
_OPCHECK_TRACED = ("test_faketensor", "test_aot_dispatch_dynamic")


def test_opcheck() -> None:
    x, w, b = torch.randn(2, 3, 9, 9), torch.randn(20, 3, 3, 3), torch.randn(20)
    torch.library.opcheck(
        direct_conv_op,
        (x, direct_conv_pack(w), b, 20, [2, 1], [1, 0], True),
        test_utils=("test_schema", *_OPCHECK_TRACED),
    )
    args = (x, w, direct_conv_pack(w), b, [1, 1], [1, 1], [1, 1], 1, True, 1 << 22, 64)
    with torch.backends.mkldnn.flags(enabled=False):
        torch.library.opcheck(small_conv2d_op, args, test_utils=("test_schema", *_OPCHECK_TRACED))
    torch.library.opcheck(small_conv2d_op, args, test_utils=_OPCHECK_TRACED)


def test_frozen_torchscript_packs_the_weight_once() -> None:
    """torch.jit.freeze folds direct_conv_pack of a frozen weight into a constant: the graph calls
    small_conv2d alone, and its output equals conv2d's."""

    class SmallConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(24, 6, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            packed = torch.ops.deeprebirth.direct_conv_pack(self.weight)
            return torch.ops.deeprebirth.small_conv2d(
                x, self.weight, packed, None, [1, 1], [1, 1], [1, 1], 1, True, 1 << 22, 64
            )

    module = SmallConv().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation
        frozen = torch.jit.freeze(torch.jit.script(module))
    kinds = [node.kind() for node in frozen.graph.nodes()]
    assert "deeprebirth::small_conv2d" in kinds and "deeprebirth::direct_conv_pack" not in kinds
    x = torch.randn(1, 6, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            frozen(x), F.relu(F.conv2d(x, module.weight, None, 1, 1)), rtol=1e-4, atol=1e-5
        )


def _branches(seed: int = 0):
    """Two branches over their own inputs, like a branch-slimmed Inception module's 3x3 and 5x5."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(2, 6, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)]
    ws = [torch.randn(20, 6, 3, 3, generator=g) / 7, torch.randn(5, 3, 5, 5, generator=g) / 8]
    bs = [torch.randn(20, generator=g), None]
    return xs, ws, bs, [1, 1], [1, 2]


def test_small_conv2d_cat_writes_each_branch_into_its_channels() -> None:
    xs, ws, bs, strides, paddings = _branches()
    packed = [direct_conv_pack(w) for w in ws]
    expected = torch.cat(
        [
            F.relu(F.conv2d(x, w, b, s, p))
            for x, w, b, s, p in zip(xs, ws, bs, strides, paddings, strict=True)
        ],
        1,
    )

    def call(max_macs: int = 1 << 22):
        return small_conv2d_cat(xs, ws, packed, bs, strides, paddings, True, max_macs)

    assert _ran_direct_kernel(call)
    torch.testing.assert_close(call(), expected, rtol=1e-4, atol=1e-5)
    assert not _ran_direct_kernel(lambda: call(max_macs=1))  # a branch does not pay: conv2d + cat
    torch.testing.assert_close(call(max_macs=1), expected, rtol=1e-4, atol=1e-5)


def test_small_conv2d_cat_gradients_go_through_conv2d() -> None:
    xs, ws, bs, strides, paddings = _branches(1)
    xs = [x.requires_grad_() for x in xs]
    packed = [direct_conv_pack(w) for w in ws]
    small_conv2d_cat(xs, ws, packed, bs, strides, paddings, relu=True).square().sum().backward()
    refs = [x.detach().requires_grad_() for x in xs]
    torch.cat(
        [
            F.relu(F.conv2d(x, w, b, s, p))
            for x, w, b, s, p in zip(refs, ws, bs, strides, paddings, strict=True)
        ],
        1,
    ).square().sum().backward()
    for x, ref in zip(xs, refs, strict=True):
        torch.testing.assert_close(x.grad, ref.grad, rtol=1e-4, atol=1e-5)


def test_direct_conv_cat_errors_name_the_branch() -> None:
    xs, ws, bs, strides, paddings = _branches()
    packed = [direct_conv_pack(w) for w in ws]
    op = torch.ops.deeprebirth.direct_conv_cat
    with pytest.raises(RuntimeError, match="branch 1: direct_conv: expected x to have"):
        op([xs[0], xs[0]], packed, bs, [20, 5], [1, 1, 1, 1], [1, 1, 2, 2], False)
    with pytest.raises(RuntimeError, match="branch 1 gives \\(2, 10x10\\)"):
        op(xs, packed, bs, [20, 5], [1, 1, 1, 1], [1, 1, 3, 3], False)
    with pytest.raises(RuntimeError, match="one packed weight, bias and out_channels"):
        op(xs, packed[:1], bs, [20, 5], [1, 1, 1, 1], [1, 1, 2, 2], False)


def test_cat_opcheck() -> None:
    xs, ws, bs, strides, paddings = _branches()
    packed = [direct_conv_pack(w) for w in ws]
    flat_strides, flat_paddings = [1, 1, 1, 1], [1, 1, 2, 2]
    torch.library.opcheck(
        torch.ops.deeprebirth.direct_conv_cat,
        (xs, packed, bs, [20, 5], flat_strides, flat_paddings, True),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )
    args = (xs, ws, packed, bs, flat_strides, flat_paddings, True, 1 << 22, 64)
    with torch.backends.mkldnn.flags(enabled=False):
        torch.library.opcheck(
            torch.ops.deeprebirth.small_conv2d_cat,
            args,
            test_utils=("test_schema", *_OPCHECK_TRACED),
        )
    torch.library.opcheck(torch.ops.deeprebirth.small_conv2d_cat, args, test_utils=_OPCHECK_TRACED)
