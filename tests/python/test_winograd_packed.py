"""Winograd on frozen 3x3 layers (``small_conv2d``'s C++ path): against ATen's conv2d, with
every instruction set, non-finite values, the per-shape choice, and weight updates through
``PackedConv2d``."""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch
import torch.nn.functional as F
from isa_helpers import run_with_cpu_isa
from onednn_names import as_onednn
from torch import nn

import deeprebirth.ops
from deeprebirth.nn import PackedConv2d, freeze_packed_weights
from deeprebirth.nn.packed_conv import PackedConvConcat

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="oneDNN (mkldnn) is not in this torch build"
)

ONEDNN = "mkldnn::_convolution_pointwise"
WINOGRAD = "deeprebirth::winograd_conv2d"
NO_DIRECT = torch.empty(0)


def _small_conv2d(x, w, b, padding, relu: bool) -> torch.Tensor:
    """``small_conv2d`` with the direct kernel ruled out: oneDNN or Winograd on a frozen weight."""
    return torch.ops.deeprebirth.small_conv2d(
        x, w, NO_DIRECT, b, [1, 1], list(padding), [1, 1], 1, relu, 0, 0
    )


def _reference(x, w, b, padding, relu: bool) -> torch.Tensor:
    y = F.conv2d(x, w, b, 1, padding)
    return F.relu(y) if relu else y


def _ops_run(fn, *args) -> tuple[torch.Tensor, list[str]]:
    """``fn(*args)`` and the names of the operators it ran (seen by the profiler)."""
    with torch.profiler.profile() as prof:
        out = fn(*args)
    return out, [as_onednn(event.name) for event in prof.events()]


def _random_layer(rng: random.Random):
    """A Winograd-shaped layer (3x3, stride 1, C_in >= 8, C_out >= 16) and an input: odd and even
    sizes, each padding up to 2, both layouts and a channel view, with and without bias."""
    cin, cout = rng.choice([8, 13, 32, 70]), rng.choice([16, 24, 40, 72])
    padding = (rng.randint(0, 2), rng.randint(0, 2))
    h, w = (rng.randint(max(1, 3 - 2 * p), 21) for p in padding)  # outputs of 1 to 21 + 2p - 2
    batch = rng.randint(1, 3)
    layout = rng.choice(["contiguous", "channels_last", "channel_view"])
    if layout == "channel_view":  # channels of a channels_last tensor, as after a merged layer
        x = torch.randn(batch, cin + 5, h, w).contiguous(memory_format=torch.channels_last)
        x = x.narrow(1, 2, cin)
    else:
        x = torch.randn(batch, cin, h, w)
        x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    weight = torch.randn(cout, cin, 3, 3) / (9 * cin) ** 0.5
    bias = torch.randn(cout) if rng.random() < 0.7 else None
    return x, weight, bias, padding, rng.random() < 0.5


def check_forced_winograd_matches_conv2d(mode: str = "1") -> None:
    """Forced Winograd (``mode`` "1": F(2x2, 3x3), "4": F(4x4, 3x3)) on 24 random layers:
    conv2d's values (1e-4; F(4x4)'s transforms round more, so 1e-4 of the output's magnitude
    absolute), no oneDNN convolution run, and the packed path's channels_last output (oneDNN's, so
    that the timed choice never changes the layout)."""
    os.environ["DEEPREBIRTH_PACKED_WINOGRAD"] = mode
    atol = 1e-5 if mode == "1" else 1e-4
    rng = random.Random(7)
    for case in range(24):
        x, w, b, padding, relu = _random_layer(rng)
        with torch.no_grad():
            actual, ran = _ops_run(_small_conv2d, x, w, b, padding, relu)
        expected = _reference(x, w, b, padding, relu)
        assert ONEDNN not in ran and WINOGRAD in ran, f"case {case}: {sorted(set(ran))}"
        torch.testing.assert_close(
            actual, expected, rtol=1e-4, atol=atol, msg=lambda m, c=case: f"case {c}: {m}"
        )
        assert actual.is_contiguous(memory_format=torch.channels_last), f"case {case}"


@pytest.mark.parametrize("mode", ["1", "4"])
def test_forced_winograd_matches_conv2d(mode: str, monkeypatch) -> None:
    monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", mode)
    check_forced_winograd_matches_conv2d(mode)


@pytest.mark.parametrize("mode", ["1", "4"])
@pytest.mark.parametrize("isa", ["avx2", "sse2"])
def test_forced_winograd_matches_conv2d_with_every_instruction_set(isa: str, mode: str) -> None:
    """The same with the narrower register tiles and transforms, chosen by DEEPREBIRTH_CPU_ISA
    in a fresh process."""
    run_with_cpu_isa(
        isa,
        f"import test_winograd_packed as t; t.check_forced_winograd_matches_conv2d({mode!r})",
    )


@pytest.mark.parametrize("where", ["input", "weight"])
def test_non_finite_values_take_onednn(where: str, monkeypatch) -> None:
    """Winograd's transforms would spread an infinity over a 2x2 block of outputs (and make NaN
    of inf - inf): such calls run oneDNN, with the outputs of the path that never runs Winograd
    (NaN where it has NaN). The same weight and shape with a finite input run Winograd again."""
    monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", "0")
    torch.manual_seed(5)
    x, w = torch.randn(1, 16, 9, 9), torch.randn(32, 16, 3, 3) / 12
    target = x if where == "input" else w
    target.view(-1)[[5, 77, 140]] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = _small_conv2d(x, w.clone(), None, (1, 1), False)
        monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", "1")
        actual, ran = _ops_run(lambda: _small_conv2d(x, w, None, (1, 1), False))
        assert ONEDNN in ran and WINOGRAD not in ran
        torch.testing.assert_close(actual, expected, equal_nan=True, rtol=0, atol=0)
        if where == "input":
            x.nan_to_num_(0.0, 0.0, 0.0)
            actual, ran = _ops_run(lambda: _small_conv2d(x, w, None, (1, 1), False))
            assert ONEDNN not in ran
            torch.testing.assert_close(actual, _reference(x, w, None, (1, 1), False))


def test_channel_views_reach_winograd_uncopied(monkeypatch) -> None:
    """A channel slice of a channels_last tensor (a merged layer's output read through narrow)
    goes to Winograd as it is: no copy runs, and only the slice's own channels decide whether the
    input is finite (a NaN in the other channels changes nothing)."""
    monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", "1")
    torch.manual_seed(3)
    base = torch.randn(2, 40, 11, 11).contiguous(memory_format=torch.channels_last)
    x, w = base.narrow(1, 8, 24), torch.randn(32, 24, 3, 3) / 15
    with torch.no_grad():
        base[0, 35, 4, 4] = float("nan")  # outside the slice
        actual, ran = _ops_run(_small_conv2d, x, w, None, (1, 1), True)
        assert WINOGRAD in ran and ONEDNN not in ran
        assert "aten::copy_" not in ran and "aten::clone" not in ran, sorted(set(ran))
        torch.testing.assert_close(actual, _reference(x, w, None, (1, 1), True))
        base[1, 10, 4, 4] = float("nan")  # inside it: oneDNN, on a dense copy
        actual, ran = _ops_run(_small_conv2d, x, w, None, (1, 1), True)
        assert ONEDNN in ran and WINOGRAD not in ran
        monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", "0")  # a path that never runs it
        expected = _small_conv2d(x.contiguous(), w.clone(), None, (1, 1), True)
        torch.testing.assert_close(actual, expected, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize(("mode", "timing"), [("0", None), (None, None), (None, "warm")])
def test_each_layer_keeps_one_kernel_per_input_shape(
    mode: str | None, timing: str | None, monkeypatch
) -> None:
    """Switched off, every call runs oneDNN; measured (the default, with each kernel's weight
    evicted from the caches before its timed calls, or ``DEEPREBIRTH_PACKED_TIMING=warm``), the
    first call of a shape times both kernels and every later call runs the one that was faster,
    with conv2d's values."""
    for name, value in (
        ("DEEPREBIRTH_PACKED_WINOGRAD", mode),
        ("DEEPREBIRTH_PACKED_TIMING", timing),
    ):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    torch.manual_seed(6)
    x = torch.randn(1, 32, 14, 14).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(64, 32, 3, 3) / 17, torch.randn(64)
    with torch.no_grad():
        first, ran_first = _ops_run(lambda: _small_conv2d(x, w, b, (1, 1), True))
        _, ran = _ops_run(lambda: [_small_conv2d(x, w, b, (1, 1), True) for _ in range(4)])
    if mode == "0":
        assert ran_first.count(ONEDNN) == 1
    else:  # one untimed and three timed oneDNN calls in the first call, then the choice
        assert ran_first.count(ONEDNN) in (4, 5)
    assert ran.count(ONEDNN) in ((4,) if mode == "0" else (0, 4)), ran.count(ONEDNN)
    assert ran.count(ONEDNN) + ran.count(WINOGRAD) == 4  # one kernel per call
    torch.testing.assert_close(first, _reference(x, w, b, (1, 1), True), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("frozen", [False, True])
def test_packed_conv2d_winograd_follows_weight_updates(frozen: bool, monkeypatch) -> None:
    """``PackedConv2d`` runs its 3x3 layers through the same path; an in-place update (seen by
    the version counter) and ``load_state_dict`` give the new weight's outputs, never those of a
    transformed weight kept from before."""
    monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", "1")
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", 0)
    torch.manual_seed(8)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    packed = PackedConv2d.from_conv(copy.deepcopy(conv), relu=True).eval()
    if frozen:
        freeze_packed_weights(packed)
    x = torch.randn(2, 16, 10, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        actual, ran = _ops_run(lambda: packed(x))
        assert "deeprebirth::small_conv2d" in ran and WINOGRAD in ran and ONEDNN not in ran
        torch.testing.assert_close(actual, F.relu(conv(x)), rtol=1e-4, atol=1e-5)
        packed.weight.mul_(-0.5)
        expected = F.relu(packed.to_standard()[0](x))
        torch.testing.assert_close(packed(x), expected, rtol=1e-4, atol=1e-5)
    packed.load_state_dict(conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(packed(x), F.relu(conv(x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_concatenated_branches_write_into_their_channels(layout: str, monkeypatch) -> None:
    """``small_conv2d_cat`` over an Inception module's frozen 3x3 and 5x5 branches: with
    channels_last inputs the Winograd branch writes straight into its channels of the result
    and the other branch's output is copied into its own (no ``torch.cat``); NCHW inputs keep
    ``torch.cat``. Either way the values of ``torch.cat`` of the convolutions, channels_last (the
    packed path's layout)."""
    monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", "1")
    torch.manual_seed(9)
    fmt = getattr(torch, layout if layout == "channels_last" else "contiguous_format")
    xs = [torch.randn(2, c, 11, 13).contiguous(memory_format=fmt) for c in (24, 8)]
    ws = [torch.randn(40, 24, 3, 3) / 15, torch.randn(24, 8, 5, 5) / 14]
    bs = [torch.randn(40), None]
    packed = [deeprebirth.ops.direct_conv_pack(w) for w in ws]
    args = (xs, ws, packed, bs, [1, 1, 1, 1], [1, 1, 2, 2], True, 0, 0)
    with torch.no_grad():
        actual, ran = _ops_run(torch.ops.deeprebirth.small_conv2d_cat, *args)
    expected = torch.cat([_reference(x, w, b, p, True) for x, w, b, p in
                          zip(xs, ws, bs, [(1, 1), (2, 2)], strict=True)], 1)  # fmt: skip
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert actual.is_contiguous(memory_format=torch.channels_last)
    assert WINOGRAD in ran and ran.count(ONEDNN) == 1
    assert ("aten::cat" in ran) == (layout == "contiguous"), sorted(set(ran))
    # branches whose outputs do not line up still get cat's error
    bad = ([xs[0], xs[1][..., :-1]], *args[1:])
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"), torch.no_grad():
        torch.ops.deeprebirth.small_conv2d_cat(*bad)


def test_packed_conv_concat_runs_its_winograd_branch_into_the_output(monkeypatch) -> None:
    """Eager ``PackedConvConcat`` (an Inception module's branches after ``flatten_for_inference``)
    takes the same C++ path on its layers' snapshots: no ``torch.cat``, the values of its
    standard form, and an in-place weight update is seen."""
    monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", "1")
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", 0)
    torch.manual_seed(10)
    convs = [nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(8, 16, 5, padding=2)]
    module = PackedConvConcat([PackedConv2d.from_conv(c, relu=True) for c in convs]).eval()
    freeze_packed_weights(module)
    xs = [torch.randn(1, c, 9, 9).contiguous(memory_format=torch.channels_last) for c in (16, 8)]
    with torch.no_grad():
        actual, ran = _ops_run(module, xs)
        assert WINOGRAD in ran and "aten::cat" not in ran, sorted(set(ran))
        torch.testing.assert_close(actual, module.to_standard()(xs), rtol=1e-4, atol=1e-5)
        module.convs[0].weight.mul_(-1.0)
        torch.testing.assert_close(module(xs), module.to_standard()(xs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "change", ["grad", "train", "in_place", "frozen_in_place", "shape", "threshold", "copy"]
)
def test_packed_conv_concat_repeated_call_sees_what_changed(change: str, monkeypatch) -> None:
    """A call repeating the last C++ call of an eager ``PackedConvConcat`` skips the per-layer
    checks; whatever changed in between (autograd, mode, weight values, input shape, a layer's
    kernel threshold) still decides the path and the result, and a copy of the module keeps
    none of the original's state."""
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", 0)
    torch.manual_seed(11)
    convs = [nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(8, 16, 5, padding=2)]
    module = PackedConvConcat([PackedConv2d.from_conv(c, relu=True) for c in convs]).eval()
    if change == "frozen_in_place":
        freeze_packed_weights(module)
    xs = [torch.randn(1, c, 9, 9).contiguous(memory_format=torch.channels_last) for c in (16, 8)]
    with torch.no_grad():
        module(xs)
        first = module._last_call
        assert first and module._repeated_call(xs) is not None  # the next call would repeat it
    context = torch.no_grad()
    if change == "grad":
        context = torch.enable_grad()
    elif change == "train":
        module.convs[1].train()
    elif change in ("in_place", "frozen_in_place"):
        with torch.no_grad():
            module.convs[1].weight.mul_(-0.5)
    elif change == "shape":
        xs = [
            torch.randn(2, c, 7, 9).contiguous(memory_format=torch.channels_last) for c in (16, 8)
        ]
    elif change == "threshold":
        monkeypatch.setattr(PackedConv2d, "min_packed_macs", 1 << 40)
    elif change == "copy":
        module = copy.deepcopy(module)
        assert not module._last_call
        with torch.no_grad():
            module.convs[0].weight.mul_(-1.0)
    with context:
        assert module._repeated_call(xs) is None
        actual = module(xs)
        expected = module.to_standard()(xs)
    if change == "grad":
        assert actual.requires_grad  # the layers' own forwards: differentiable
        actual.sum().backward()
        assert module.convs[0].weight.grad is not None
    torch.testing.assert_close(actual.detach(), expected.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_ops_pass_opcheck(tile: int) -> None:
    """``winograd_pack`` and ``winograd_conv2d`` for both tiles: schemas, fake kernels (the
    transformed weight's shape, 16 or 36 elements of the transform) and the real kernels agree
    (``torch.library.opcheck``), and F(4x4, 3x3) computes conv2d within 1e-4 of its magnitude."""
    torch.manual_seed(8)
    w = torch.randn(40, 24, 3, 3) / 15
    packed = deeprebirth.ops.winograd_pack(w, tile)
    assert packed.shape == ((tile + 2) ** 2, 3, 24, 16)
    torch.library.opcheck(torch.ops.deeprebirth.winograd_pack.default, (w, tile))
    x = torch.randn(2, 24, 13, 10).contiguous(memory_format=torch.channels_last)
    args = (x, packed, torch.randn(40), 40, [1, 1], True)
    torch.library.opcheck(torch.ops.deeprebirth.winograd_conv2d.default, args)
    y = deeprebirth.ops.winograd_conv2d(*args)
    expected = F.relu(F.conv2d(x.double(), w.double(), args[2].double(), 1, 1))
    assert (y.double() - expected).abs().max() <= 1e-4 * expected.abs().max()
    with pytest.raises(RuntimeError, match="expected tile 2"):
        deeprebirth.ops.winograd_pack(w, 3)
