"""The packed path's own oneDNN primitives (deeprebirth::onednn_conv2d and its variants) against
ATen's conv2d, and which path a packed layer takes."""

from __future__ import annotations

import doctest
import random
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from isa_helpers import run_with_cpu_isa

import deeprebirth.ops
from deeprebirth.ops import onednn_conv

ops = torch.ops.deeprebirth
OWN = bool(deeprebirth.ops.build_info()["onednn"])
needs_own = pytest.mark.skipif(not OWN, reason="built without oneDNN: ATen's oneDNN path only")
pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="oneDNN (mkldnn) is not in this torch build"
)
NO_DIRECT = torch.empty(0)


def _case(rng: random.Random) -> dict:
    """A random layer and input: groups, dilation, stride, padding, bias or not, 1x1 to 5x5."""
    groups = rng.choice([1, 1, 2, 4])
    cin, cout = groups * rng.randint(1, 12), groups * rng.randint(1, 12)
    kh, kw = rng.choice([(1, 1), (3, 3), (5, 5), (1, 5), (3, 1)])
    dilation = rng.randint(1, 2)
    h, w = rng.randint(dilation * (kh - 1) + 2, 17), rng.randint(kw + 2, 17)
    return {
        "x": torch.randn(rng.randint(1, 3), cin, h, w),
        "w": torch.randn(cout, cin // groups, kh, kw),
        "b": torch.randn(cout) if rng.random() < 0.7 else None,
        "stride": [rng.randint(1, 2), rng.randint(1, 2)],
        "padding": [rng.randint(0, kh // 2 + 1), rng.randint(0, kw // 2 + 1)],
        "dilation": [dilation, 1],
        "groups": groups,
    }


def _args(case: dict, x: torch.Tensor) -> tuple:
    """conv2d's arguments for ``case`` on input ``x``."""
    keys = ("w", "b", "stride", "padding", "dilation", "groups")
    return (x, *(case[key] for key in keys))


def _conv(case: dict) -> torch.Tensor:
    return F.conv2d(*_args(case, case["x"]))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@torch.no_grad()
def test_operators_compute_conv2d_with_their_epilogue(layout: str) -> None:
    """onednn_conv2d, its out= form and onednn_conv2d_add_ equal conv2d (+ residual, + ReLU) on
    60 random layers, on the first call (which makes the primitive) and the second (which runs
    the kept one); the output is channels_last."""
    rng = random.Random(5)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for _ in range(60):
        case = _case(rng)
        x = case["x"].contiguous(memory_format=fmt)
        expected = _conv(case)
        for _call in range(2):
            for relu in (False, True):
                want = expected.relu() if relu else expected
                y = ops.onednn_conv2d(*_args(case, x), relu)
                assert y.is_contiguous(memory_format=torch.channels_last)
                torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
                out = torch.full_like(want, float("nan"), memory_format=torch.channels_last)
                assert ops.onednn_conv2d.out(*_args(case, x), relu, out=out) is out
                torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
                residual = torch.randn_like(expected, memory_format=torch.channels_last)
                summed = expected + residual
                want = summed.relu() if relu else summed
                assert ops.onednn_conv2d_add_(residual, *_args(case, x), relu) is residual
                torch.testing.assert_close(residual, want, rtol=1e-4, atol=1e-4)


def test_operators_check_their_arguments() -> None:
    x, w = torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3)
    with pytest.raises(RuntimeError, match="onednn_conv2d: arguments conv2d does not take"):
        ops.onednn_conv2d(x, torch.randn(6, 5, 3, 3), None, [1, 1], [1, 1], [1, 1], 1, False)
    with pytest.raises(RuntimeError, match=re.escape("expected out of shape [1, 6, 8, 8]")):
        ops.onednn_conv2d.out(x, w, None, [1, 1], [1, 1], [1, 1], 1, False, out=torch.empty(1))
    with pytest.raises(RuntimeError, match="onednn_conv2d_add_: expected out of shape"):
        ops.onednn_conv2d_add_(
            torch.empty(1, 6, 7, 7), x, w, None, [1, 1], [1, 1], [1, 1], 1, False
        )


def test_a_weight_that_requires_grad_gets_conv2d_and_its_gradient() -> None:
    x, w = torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3, requires_grad=True)
    x = x.contiguous(memory_format=torch.channels_last)
    y = ops.onednn_conv2d(x, w.detach(), None, [1, 1], [1, 1], [1, 1], 1, True)
    torch.testing.assert_close(y, F.relu(F.conv2d(x, w.detach(), None, 1, 1)))


def test_fake_implementations_match_the_kernels() -> None:
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(12, 8, 3, 3), torch.randn(12)
    args = (x, w, b, [2, 1], [1, 1], [1, 1], 1, True)
    torch.library.opcheck(
        ops.onednn_conv2d.default, args, test_utils=["test_schema", "test_faketensor"]
    )
    residual = torch.randn(2, 12, 5, 9).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(
        ops.onednn_conv2d_add_.default,
        (residual, *args),
        test_utils=["test_schema", "test_faketensor"],
    )


def _onednn_ran(fn) -> list[str]:
    """Which oneDNN operators calling ``fn`` ran (the profiler)."""
    with torch.profiler.profile() as prof:
        fn()
    names = ("deeprebirth::onednn_conv2d", "mkldnn::_convolution_pointwise")
    return [event.name for event in prof.events() if event.name in names]


@needs_own
@torch.no_grad()
def test_packed_layers_run_the_own_primitive_on_channels_last(monkeypatch) -> None:
    """A frozen 5x5 layer (neither Winograd nor, with max_macs 0, the direct kernel applies) runs
    the library's primitive on a channels_last input and on an NCHW one (copied to
    channels_last, the layout the packed path writes); with DEEPREBIRTH_ONEDNN_PRIMITIVES=0 when
    it is packed, ATen's op on both. Same values as conv2d, channels_last out."""
    w, b = torch.randn(16, 8, 5, 5), torch.randn(16)
    for env, own in (("1", True), ("0", False)):
        monkeypatch.setenv("DEEPREBIRTH_ONEDNN_PRIMITIVES", env)
        weight = w.clone()  # a new weight: packed anew, under this setting
        for fmt in (torch.channels_last, torch.contiguous_format):
            x = torch.randn(1, 8, 14, 14).contiguous(memory_format=fmt)

            def call(x=x, weight=weight):
                return ops.small_conv2d(
                    x, weight, NO_DIRECT, b, [1, 1], [2, 2], [1, 1], 1, True, 0, 0
                )

            call()
            ran = _onednn_ran(call)
            name = "deeprebirth::onednn_conv2d" if own else "mkldnn::_convolution_pointwise"
            assert ran == [name], (env, fmt, ran)
            y = call()
            torch.testing.assert_close(
                y, F.relu(F.conv2d(x, weight, b, 1, 2)), rtol=1e-4, atol=1e-4
            )
            assert y.is_contiguous(memory_format=torch.channels_last)


def check_few_channel_nchw_inputs() -> None:
    """Frozen layers on NCHW images of 1 to 4 channels (which the packed path copies to
    channels_last with its own transpose) and of 5 (ATen's copy): conv2d's values, channels_last
    out, over batches and odd sizes."""
    rng = random.Random(11)
    with torch.no_grad():
        for channels in (1, 2, 3, 4, 5):
            for _ in range(3):
                x = torch.randn(rng.randint(1, 3), channels, rng.randint(3, 40), rng.randint(3, 70))
                w, b = torch.randn(16, channels, 3, 3), torch.randn(16)
                y = ops.small_conv2d(x, w, NO_DIRECT, b, [1, 1], [1, 1], [1, 1], 1, True, 0, 0)
                want = F.relu(F.conv2d(x, w, b, 1, 1))
                torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
                assert y.is_contiguous(memory_format=torch.channels_last)


@needs_own
@pytest.mark.parametrize("isa", ["avx512", "avx2", "sse2"])
def test_few_channel_nchw_inputs_with_every_instruction_set(isa: str) -> None:
    run_with_cpu_isa(isa, "import test_onednn_conv as t; t.check_few_channel_nchw_inputs()")


@needs_own
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_onednn_shares_torchs_openmp_runtime() -> None:
    """The library's oneDNN runs on the OpenMP runtime torch loaded: one libgomp in the process,
    so one pool of threads (two would fight over the cores between layers)."""
    ops.onednn_conv2d(
        torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last),
        torch.randn(4, 4, 3, 3),
        None,
        [1, 1],
        [1, 1],
        [1, 1],
        1,
        False,
    )
    with open("/proc/self/maps") as maps:
        loaded = {line.split()[-1] for line in maps if len(line.split()) >= 6}
    assert any("libdnnl.so" in path for path in loaded), "libdnnl is not loaded"
    openmp = {path for path in loaded if re.search(r"lib(g|i)omp[^/]*\.so", path)}
    assert len(openmp) == 1, openmp


def test_docstring_examples() -> None:
    """The wrappers' examples (each against conv2d) hold."""
    result = doctest.testmod(onednn_conv)
    assert result.failed == 0 and result.attempted > 0
