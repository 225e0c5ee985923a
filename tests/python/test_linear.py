"""deeprebirth::linear and InferenceLinear against ATen's linear and nn.Linear."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import deeprebirth
from deeprebirth.nn import InferenceLinear
from deeprebirth.ops import linear

ops = torch.ops.deeprebirth


@pytest.mark.parametrize("threads", [1, 2, 3])
@torch.no_grad()
def test_linear_matches_aten_on_random_shapes(threads: int) -> None:
    """80 random calls: 1-4-d inputs (some non-contiguous), float32 and float64, with and without
    bias, more or fewer output features than threads; values as F.linear's, shape (..., N),
    contiguous."""
    rng = random.Random(threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(80):
            dtype = rng.choice([torch.float32, torch.float64])
            k, n = rng.randint(1, 300), rng.randint(1, 300)
            lead = [rng.randint(1, 5) for _ in range(rng.randint(0, 3))]
            x = torch.randn(*lead, k + 3, dtype=dtype)[..., 2 : k + 2]  # strided last dim view
            if rng.random() < 0.5:
                x = x.contiguous()
            w = torch.randn(n, k, dtype=dtype)
            b = torch.randn(n, dtype=dtype) if rng.random() < 0.7 else None
            y = linear(x, w, b)
            assert y.shape == (*lead, n) and y.is_contiguous() and y.dtype == dtype
            torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_other_calls_are_atens() -> None:
    """Other dtypes give ATen's exact values; arguments ATen rejects raise ATen's errors."""
    x, w = torch.randn(3, 8).to(torch.bfloat16), torch.randn(5, 8).to(torch.bfloat16)
    assert torch.equal(linear(x, w), F.linear(x, w))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        linear(torch.randn(3, 8), torch.randn(5, 7))
    with pytest.raises(RuntimeError):
        linear(torch.randn(3, 8), torch.randn(5, 8), torch.randn(4))


def test_gradients_are_atens() -> None:
    x = torch.randn(4, 16, requires_grad=True)
    w, b = torch.randn(6, 16, requires_grad=True), torch.randn(6, requires_grad=True)
    linear(x, w, b).square().sum().backward()
    grads = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    F.linear(x, w, b).square().sum().backward()
    for ours, theirs in zip(grads, (x.grad, w.grad, b.grad), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_fake_implementation_and_flop_formula() -> None:
    x, w, b = torch.randn(2, 3, 40), torch.randn(24, 40), torch.randn(24)
    torch.library.opcheck(
        ops.linear.default, (x, w, b), test_utils=["test_schema", "test_faketensor"]
    )
    with FlopCounterMode(display=False) as ours:
        linear(x, w, b)
    with FlopCounterMode(display=False) as atens:
        F.linear(x, w, b)
    assert ours.get_total_flops() == atens.get_total_flops() > 0


def test_inference_linear_shares_its_parameters_and_scripts() -> None:
    standard = nn.Linear(32, 10)
    module = InferenceLinear.from_linear(standard).eval()
    assert module.weight is standard.weight and module.bias is standard.bias
    back = module.to_standard()
    assert type(back) is nn.Linear and back.weight is standard.weight
    x = torch.randn(4, 32)
    with torch.no_grad():
        expected = standard(x)
        torch.testing.assert_close(module(x), expected)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation
            scripted = torch.jit.freeze(torch.jit.script(module))
        torch.testing.assert_close(scripted(x), expected)
    no_bias = InferenceLinear.from_linear(nn.Linear(32, 10, bias=False))
    assert no_bias.bias is None and no_bias.to_standard().bias is None


def test_pack_conv_puts_inference_linear_in_place_and_portable_takes_it_back() -> None:
    """The pack_conv rule swaps nn.Linear for InferenceLinear (the same values; the input model's
    layer stays), the deployed model keeps its outputs, and make_portable gives nn.Linear back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    deployed, report = deeprebirth.slim(model, ["pack_conv"], x)
    assert report.exact
    swapped = [m for m in deployed.modules() if isinstance(m, InferenceLinear)]
    assert len(swapped) == 1 and torch.equal(swapped[0].weight, model[3].weight)
    assert type(model[3]) is nn.Linear  # the model's own layer is left as it is
    flat = deeprebirth.surgery.flatten_for_inference(deployed.eval())
    assert any(isinstance(m, InferenceLinear) for m in flat.modules())
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(deployed(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(flat(x), expected, rtol=1e-5, atol=1e-6)
    portable = deeprebirth.export.make_portable(flat)
    assert not any(isinstance(m, InferenceLinear) for m in portable.modules())
    assert not deeprebirth.export.uses_deeprebirth_ops(portable)
    with torch.no_grad():
        torch.testing.assert_close(portable(x), expected, rtol=1e-5, atol=1e-6)
