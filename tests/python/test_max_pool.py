"""deeprebirth::max_pool2d and InferenceMaxPool2d: against ATen's max_pool2d (values, NaN,
memory format, gradients, errors) over a seeded grid and every instruction set, opcheck, and the
module's place in flatten_for_inference, TorchScript and the portable form."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from isa_helpers import run_with_cpu_isa
from torch import nn

import deeprebirth.ops
from deeprebirth.export import make_portable
from deeprebirth.nn import InferenceMaxPool2d
from deeprebirth.surgery import flatten_for_inference


def _random_case(rng: random.Random) -> tuple[torch.Tensor, int, int, int, bool]:
    """A channels_last input (float32 mostly, float64 sometimes; NaN, infinities or a
    whole -inf window in some) and pooling arguments ATen accepts."""
    k = rng.randint(1, 5)
    s, p, ceil = rng.randint(1, 3), rng.randint(0, k // 2), rng.random() < 0.5
    h, w = rng.randint(k, 19), rng.randint(k, 19)
    x = torch.randn(rng.randint(1, 3), rng.choice([2, 3, 16, 17, 64, 130]), h, w)
    special = rng.choice(["", "", "nan", "inf", "-inf"])
    if special:
        x.view(-1)[rng.randrange(x.numel())] = float(special)
    if rng.random() < 0.2:
        x[..., : min(k, h), : min(k, w)] = -float("inf")
    x = x.contiguous(memory_format=torch.channels_last)
    return (x.double() if rng.random() < 0.15 else x), k, s, p, ceil


def _assert_same(actual: torch.Tensor, expected: torch.Tensor, msg: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=msg)
    assert actual.stride() == expected.stride(), msg


def check_matches_aten(cases: int = 120) -> None:
    """``cases`` random channels_last calls equal ATen's max_pool2d bit for bit, NaN where it
    has NaN, with its strides."""
    rng = random.Random(11)
    for case in range(cases):
        x, k, s, p, ceil = _random_case(rng)
        msg = f"case {case}: {tuple(x.shape)} {x.dtype} k={k} s={s} p={p} ceil={ceil}"
        actual = deeprebirth.ops.max_pool2d(x, k, s, p, ceil)
        _assert_same(actual, F.max_pool2d(x, k, s, p, ceil_mode=ceil), msg)


def test_matches_aten_on_channels_last_inputs() -> None:
    check_matches_aten()


@pytest.mark.parametrize("isa", ["avx2", "sse2"])
def test_matches_aten_with_every_instruction_set(isa: str) -> None:
    run_with_cpu_isa(isa, "import test_max_pool as t; t.check_matches_aten(60)")


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(2, 5, 11, 9),  # NCHW
        lambda: torch.randn(1, 1, 8, 8).contiguous(memory_format=torch.channels_last),
        lambda: torch.randn(2, 6, 9, 9).to(torch.bfloat16),
        lambda: torch.randn(6, 9, 9),  # unbatched
        lambda: torch.randn(0, 4, 9, 9).contiguous(memory_format=torch.channels_last),
        lambda: torch.randn(3, 8, 20, 20).permute(0, 1, 3, 2),  # transposed strides
    ],
    ids=["nchw", "one_channel", "bfloat16", "unbatched", "empty", "transposed"],
)
def test_other_inputs_take_aten(make) -> None:
    x = make()
    _assert_same(
        deeprebirth.ops.max_pool2d(x, 3, 2, 1, True), F.max_pool2d(x, 3, 2, 1, ceil_mode=True), ""
    )


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(3, 2, 2), (3, 0, 0), (0, 1, 0), (9, 1, 0)]
)
def test_invalid_arguments_raise_atens_errors(kernel: int, stride: int, padding: int) -> None:
    """Arguments ATen rejects (padding over half the kernel, zero stride or kernel, a window
    larger than the input) raise ATen's own error from the same call."""
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError) as aten:
        F.max_pool2d(x, kernel, stride, padding)
    with pytest.raises(RuntimeError) as ours:
        deeprebirth.ops.max_pool2d(x, kernel, stride, padding)
    assert str(ours.value) == str(aten.value)


def test_gradient_is_atens() -> None:
    """A call that needs a gradient runs ATen's pooling under autograd: the same gradient."""
    torch.manual_seed(2)
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(2, 16, 4, 4)
    deeprebirth.ops.max_pool2d(ours, 3, 2).backward(grad)
    F.max_pool2d(theirs, 3, 2).backward(grad)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_opcheck(layout: str) -> None:
    x = torch.randn(2, 16, 9, 9)
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    torch.library.opcheck(
        torch.ops.deeprebirth.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], True)
    )


def test_module_rejects_pools_it_cannot_compute() -> None:
    for pool in (nn.MaxPool2d(3, dilation=2), nn.MaxPool2d(3, return_indices=True)):
        with pytest.raises(ValueError, match="dilation 1 that return no indices"):
            InferenceMaxPool2d.from_pool(pool)


def test_flatten_puts_it_in_place_of_max_pools_and_export_takes_it_back() -> None:
    """flatten_for_inference swaps the model's plain max pools (not a dilated one) for
    InferenceMaxPool2d without touching the model; the flat model, its TorchScript and its
    portable form (nn.MaxPool2d again) compute the model's outputs bit for bit."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Sequential(nn.Conv2d(16, 16, 1), nn.MaxPool2d(2)),
        nn.MaxPool2d(3, 1, dilation=2),
    ).eval()
    flat = flatten_for_inference(model)
    swapped = [name for name, m in flat.named_modules() if isinstance(m, InferenceMaxPool2d)]
    assert len(swapped) == 2
    assert not any(isinstance(m, InferenceMaxPool2d) for m in model.modules())
    x = torch.randn(2, 3, 31, 29).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
        for forward in (flat, torch.jit.script(flat), make_portable(flat)):
            torch.testing.assert_close(forward(x), expected, rtol=0, atol=0)
    portable = make_portable(flat)
    assert not any(isinstance(m, InferenceMaxPool2d) for m in portable.modules())
    assert sum(type(m) is nn.MaxPool2d for m in portable.modules()) == 3
