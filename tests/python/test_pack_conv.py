"""PackedConv2d and the pack_conv rule against ATen's conv2d (+ relu) and the unmodified model."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from _surgery_helpers import randomize_batchnorm
from torch import nn

import deeprebirth
from deeprebirth.export.portable import make_portable
from deeprebirth.models import build_model
from deeprebirth.surgery.modules import PackedConv2d, PackedResidualBlock

needs_mkldnn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="oneDNN (mkldnn) is not in this torch build"
)


@pytest.fixture(autouse=True)
def pack_every_size(monkeypatch):
    """The test layers are small: pack them all (the size threshold has its own test)."""
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", 0)


# (in, out, kernel, stride, padding, dilation, groups, bias)
CONVS = [
    (3, 8, 3, 1, 1, 1, 1, True),
    (4, 6, 3, 2, 1, 1, 2, True),
    (8, 8, 3, 1, 2, 2, 8, False),
    (5, 7, (1, 5), 1, (0, 2), 1, 1, True),
    (16, 32, 1, 1, 0, 1, 1, True),
    (6, 4, 7, 3, 3, 1, 1, False),
]


def _reference(conv: nn.Conv2d, x: torch.Tensor, relu: bool) -> torch.Tensor:
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.relu(y) if relu else y


@needs_mkldnn
@pytest.mark.parametrize("spec", CONVS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_packed_path_matches_conv2d(spec, relu: bool, layout: str) -> None:
    torch.manual_seed(0)
    cin, cout, k, s, p, d, g, bias = spec
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=bias).eval()
    packed = PackedConv2d.from_conv(conv, relu=relu).eval()
    x = torch.randn(2, cin, 19, 17)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(2, cin, 38, 17)[:, :, ::2]
    with torch.inference_mode():
        actual = packed(x)
    assert packed.packed_weights, "the packed path did not run"
    torch.testing.assert_close(actual, _reference(conv, x, relu), rtol=1e-4, atol=1e-5)


def test_empty_batch_and_other_dtypes_use_the_plain_convolution() -> None:
    conv = nn.Conv2d(3, 4, 3).eval()
    packed = PackedConv2d.from_conv(conv, relu=True).eval()
    with torch.no_grad():
        assert packed(torch.randn(0, 3, 8, 8)).shape == (0, 4, 6, 6)
        x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
        torch.testing.assert_close(packed.double()(x), _reference(conv.double(), x, True))
    assert not packed.packed_weights


def test_training_and_gradients_use_the_plain_convolution() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    packed = PackedConv2d.from_conv(copy.deepcopy(conv), relu=True)
    x = torch.randn(2, 3, 9, 9)
    for mode in ("train", "eval"):  # eval with autograd on: still differentiable
        conv.train(mode == "train")
        packed.train(mode == "train")
        conv.zero_grad()
        packed.zero_grad()
        F.relu(conv(x)).square().sum().backward()
        packed(x).square().sum().backward()
        torch.testing.assert_close(packed.weight.grad, conv.weight.grad)
        torch.testing.assert_close(packed.bias.grad, conv.bias.grad)
    assert not packed.packed_weights


@needs_mkldnn
def test_weight_updates_repack() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    packed = PackedConv2d.from_conv(copy.deepcopy(conv)).eval()
    x = torch.randn(1, 4, 10, 10)
    with torch.no_grad():
        packed(x)
        packed.weight.mul_(-2.0)  # in place: the version counter moves
        torch.testing.assert_close(packed(x), _reference(packed, x, False), rtol=1e-4, atol=1e-5)
    packed.load_state_dict(conv.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(packed(x), _reference(conv, x, False), rtol=1e-4, atol=1e-5)
    assert len(packed.packed_weights) == 1  # stale copies are dropped
    packed.train()
    assert not packed.packed_weights


@needs_mkldnn
def test_at_most_max_packed_shapes_copies_are_kept() -> None:
    conv = nn.Conv2d(3, 4, 3).eval()
    packed = PackedConv2d.from_conv(conv).eval()
    with torch.no_grad():
        for batch in (1, 2, 3):
            x = torch.randn(batch, 3, 8, 8)
            torch.testing.assert_close(packed(x), _reference(conv, x, False), rtol=1e-4, atol=1e-5)
    assert [k[0][0] for k in packed.packed_weights] == [2, 3][-PackedConv2d.max_packed_shapes :]


@needs_mkldnn
def test_copy_save_script_and_standard_form_after_a_packed_forward() -> None:
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1).eval()
    packed = PackedConv2d.from_conv(conv, relu=True).eval()
    x = torch.randn(2, 3, 12, 12)
    expected = _reference(conv, x, True)
    with torch.no_grad():
        packed(x)
    assert set(packed.state_dict()) == set(conv.state_dict())
    buffer = io.BytesIO()
    torch.save(packed, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(packed), torch.load(buffer, weights_only=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in torch >= 2.11
        copies.append(torch.jit.freeze(torch.jit.script(packed)))
    copies.append(packed.to_standard())
    with torch.no_grad():
        for other in copies:
            torch.testing.assert_close(other(x), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(packed.to_standard()[0], nn.Conv2d)
    assert not isinstance(packed.to_standard()[0], PackedConv2d)


@needs_mkldnn
def test_calls_below_the_mac_threshold_run_the_plain_convolution(monkeypatch) -> None:
    conv = nn.Conv2d(8, 16, 3, padding=1).eval()
    packed = PackedConv2d.from_conv(conv).eval()
    small, large = torch.randn(1, 8, 6, 6), torch.randn(2, 8, 12, 12)
    assert packed.macs(small.shape) == 1 * 16 * 6 * 6 * 8 * 9  # closed form: N C_out H W C_in k k
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", packed.macs(large.shape))
    with torch.no_grad():
        torch.testing.assert_close(packed(small), _reference(conv, small, False))
        assert not packed.packed_weights
        torch.testing.assert_close(
            packed(large), _reference(conv, large, False), rtol=1e-4, atol=1e-5
        )
        assert list(packed.packed_weights)[0][0] == tuple(large.shape)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_residual_is_added_before_the_relu(relu: bool, grad: bool) -> None:
    torch.manual_seed(4)
    conv = nn.Conv2d(6, 8, 3, padding=1).eval()
    packed = PackedConv2d.from_conv(conv, relu=relu).eval()
    x, residual = torch.randn(2, 6, 9, 9), torch.randn(2, 8, 9, 9)
    expected = _reference(conv, x, False) + residual
    expected = F.relu(expected) if relu else expected
    with torch.set_grad_enabled(grad):
        actual = packed(x, residual)
    assert bool(packed.packed_weights) == (not grad and torch.backends.mkldnn.is_available())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_packed_residual_block_matches_the_torchvision_block(block: str) -> None:
    """The block after fold_bn + pack_conv against torchvision's block in eval mode (BatchNorm
    with random statistics): packed inference, autograd and TorchScript."""
    from deeprebirth.compat.torchvision import import_torchvision

    resnet = import_torchvision().models.resnet
    torch.manual_seed(5)
    downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    if block == "BasicBlock":
        original = resnet.BasicBlock(16, 32, stride=2, downsample=downsample)
    else:
        original = resnet.Bottleneck(16, 8, stride=2, downsample=downsample)
    original = randomize_batchnorm(nn.Sequential(original)).eval()
    x = torch.randn(2, 16, 12, 12)
    slim_model, report = deeprebirth.slim(original, ["fold_bn", "pack_conv"], x)
    assert isinstance(slim_model[0], PackedResidualBlock), report
    with torch.inference_mode():
        expected = original(x)
        torch.testing.assert_close(slim_model(x), expected, rtol=1e-4, atol=1e-4)
    assert slim_model[0].last.packed_weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(slim_model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-4)
    slim_model(x).sum().backward()  # autograd runs the plain path
    assert slim_model[0].last.weight.grad is not None


def test_unfolded_residual_blocks_are_packed_layer_by_layer_with_the_reason() -> None:
    model = randomize_batchnorm(build_model("torchvision:resnet18", num_classes=10)).eval()
    report = deeprebirth.plan(model, torch.zeros(1, 3, 32, 32), rules=["pack_conv"])
    reasons = [s.reason for s in report.skipped]
    assert len(reasons) == 8 and all("run fold_bn first" in r for r in reasons)
    assert len(report.applied) == 20  # every convolution, one by one


def test_unsupported_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="padding_mode"):
        PackedConv2d.from_conv(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding"):
        PackedConv2d.from_conv(nn.Conv2d(3, 3, 3, padding="same"))


# name -> (input size, constructor kwargs, rules before pack_conv)
MODELS = {
    "bvlc_googlenet": (64, {"width": 0.25}, ["fuse_conv_pool", "merge_branches"]),
    "torchvision:resnet18": (64, {}, ["fold_bn", "fuse_conv_pool"]),
    "torchvision:mobilenet_v2": (64, {}, ["fold_bn"]),
    "torchvision:squeezenet1_1": (64, {}, []),
}


@needs_mkldnn
@pytest.mark.parametrize("name", list(MODELS))
def test_pack_conv_rule_keeps_outputs(name: str) -> None:
    size, kwargs, before = MODELS[name]
    model = randomize_batchnorm(build_model(name, num_classes=10, **kwargs)).eval()
    x = torch.randn(2, 3, size, size)
    slim_model, report = deeprebirth.slim(model, [*before, "pack_conv"], x)

    assert report.exact
    check = deeprebirth.verify(model, slim_model, x)
    assert check.max_rel <= 1e-4, f"{name}: {check}"
    packed = [m for m in slim_model.modules() if isinstance(m, PackedConv2d)]
    assert packed and all(m.packed_weights for m in packed), "a packed path did not run"
    plain = [n for n, m in slim_model.named_modules() if type(m) is nn.Conv2d]
    assert not plain, f"{name}: convolutions left unpacked: {plain[:3]}"
    sites = [s for s in report.applied if s.rule == "pack_conv"]
    blocks = [m for m in slim_model.modules() if isinstance(m, PackedResidualBlock)]
    in_blocks = sum(1 for b in blocks for m in b.modules() if isinstance(m, PackedConv2d))
    assert len(sites) == len(packed) - in_blocks + len(blocks)
    for site in sites:  # a fused ReLU is gone from the model and flagged on the conv
        if len(site.modules) == 2:
            assert isinstance(slim_model.get_submodule(site.modules[1]), nn.Identity)
            assert slim_model.get_submodule(site.modules[0]).relu
    # resnet's blocks (shared ReLU, residual add) become PackedResidualBlocks; mobilenet's
    # activations are ReLU6 and stay
    assert len(blocks) == (8 if name == "torchvision:resnet18" else 0)
    fuses = name in ("bvlc_googlenet", "torchvision:squeezenet1_1")
    assert any(len(s.modules) == 2 for s in sites) == fuses
    again = deeprebirth.plan(slim_model, x, rules=["pack_conv"])
    assert not again.applied  # nothing left to pack
    portable = make_portable(slim_model)
    assert not any(isinstance(m, PackedConv2d) for m in portable.modules())
    assert deeprebirth.verify(model, portable, x).max_rel <= 1e-4


def test_pack_conv_rule_skips_unpackable_convolutions_with_the_reason() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU()).eval()
    report = deeprebirth.plan(model, torch.zeros(1, 3, 8, 8), rules=["pack_conv"])
    assert not report.applied
    assert any("padding_mode='reflect'" in s.reason for s in report.skipped)
