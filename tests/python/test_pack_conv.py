"""PackedConv2d and the pack_conv rule against ATen's conv2d (+ relu) and the unmodified model."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from _surgery_helpers import randomize_batchnorm
from onednn_names import as_onednn
from torch import nn

import deeprebirth
from deeprebirth.export.portable import make_portable
from deeprebirth.models import build_model
from deeprebirth.nn import BranchConv2d, PackedConv2d, PackedResidualBlock, PackedResidualStage

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
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "channel_view"])
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
    elif layout == "channel_view":  # channels of a channels_last tensor, as after a merged layer
        wide = torch.randn(2, cin + 5, 19, 17).contiguous(memory_format=torch.channels_last)
        x = wide.narrow(1, 3, cin)
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


def _packed_ran(conv: PackedConv2d) -> bool:
    """Whether a packed kernel ran in ``conv``: oneDNN's copies held here, or the C++ path of
    ``small_conv2d`` that 3x3 stride-1 layers take (Winograd or oneDNN, its choice)."""
    return bool(conv.packed_weights) or "winograd" in conv._kernel_by_shape.values()


def _ops_run(fn) -> set[str]:
    """The names of the operators that calling ``fn`` ran (seen by the profiler)."""
    with torch.profiler.profile() as prof:
        fn()
    return {as_onednn(event.name) for event in prof.events()}


@needs_mkldnn
@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_weights_made_under_inference_mode_are_followed(frozen: bool, kernel_size: int) -> None:
    """A layer copied under ``torch.inference_mode`` holds inference tensors, which have no
    version counter: even with :attr:`frozen_weights` its packed copies follow the values, so an
    in-place update inside inference mode is seen; the packed path still runs (on a snapshot
    copy), and the layer still scripts. Frozen, it warns that each call compares the weight."""
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 16, kernel_size, padding=kernel_size // 2).eval()
    x = torch.randn(1, 8, 9, 9).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed = copy.deepcopy(PackedConv2d.from_conv(conv, relu=True).eval())
        assert packed.weight.is_inference()
        deeprebirth.nn.freeze_packed_weights(packed, frozen)
        for small in (False, True):  # the packed path, then small_conv2d's
            packed.min_packed_macs = packed.macs(x.shape) + 1 if small else 0
            torch.testing.assert_close(packed(x), _reference(packed, x, True))
            if not small:  # no direct kernel to choose: oneDNN or Winograd on a kept copy
                ran = _ops_run(lambda: packed(x))
                packed_ops = {"mkldnn::_convolution_pointwise", "deeprebirth::winograd_conv2d"}
                assert packed_ops & ran, sorted(ran)
            packed.weight.mul_(-0.5)
            torch.testing.assert_close(packed(x), _reference(packed, x, True))
    slow = [w for w in caught if "no version counter" in str(w.message)]
    assert bool(slow) == frozen, [str(w.message) for w in caught]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation
        scripted = torch.jit.script(packed)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), _reference(packed, x, True))


@needs_mkldnn
@pytest.mark.parametrize(
    "change",
    ["threshold", "grad", "mkldnn_off", "autocast", "train", "in_place", "frozen_in_place"],
)
def test_a_repeated_call_sees_what_changed_since_the_last_packed_call(
    change: str, monkeypatch
) -> None:
    """A call repeating the last packed call's shape skips the cache lookups; whatever changed
    in between (kernel threshold, autograd, oneDNN switch, autocast, mode, weight values) still
    decides the kernel and the result, as on a first call."""
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, padding=1).eval()
    packed = PackedConv2d.from_conv(copy.deepcopy(conv), relu=True).eval()
    if change == "frozen_in_place":
        deeprebirth.nn.freeze_packed_weights(packed)
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        assert "mkldnn::_convolution_pointwise" in _ops_run(lambda: packed(x))
    packed_op = "mkldnn::_convolution_pointwise"
    expect_packed = False
    if change == "threshold":
        monkeypatch.setattr(PackedConv2d, "min_packed_macs", packed.macs(x.shape) + 1)
        context, run = torch.no_grad(), lambda: packed(x)
    elif change == "grad":
        x.requires_grad_()
        context, run = torch.enable_grad(), lambda: packed(x)
    elif change == "mkldnn_off":
        context, run = torch.backends.mkldnn.flags(enabled=False), lambda: packed(x)
    elif change == "autocast":
        context, run = torch.autocast("cpu", dtype=torch.bfloat16), lambda: packed(x).float()
    elif change == "train":
        packed.train()
        context, run = torch.no_grad(), lambda: packed(x)
    else:  # the weight changes in place between two packed calls
        with torch.no_grad():
            packed.weight.mul_(-0.5)
            conv.weight.mul_(-0.5)
        context, run, expect_packed = torch.no_grad(), lambda: packed(x), True
    with context:
        ran = _ops_run(run)
        actual = run()
    if change == "threshold":  # a small layer: small_conv2d's timed choice on the snapshot
        assert "deeprebirth::small_conv2d" in ran, sorted(ran)
    else:
        assert (packed_op in ran) == expect_packed, sorted(ran)
    if change == "grad":
        actual.sum().backward()  # the plain convolution: differentiable
        assert x.grad is not None
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if change == "autocast" else {}
    torch.testing.assert_close(actual.detach(), _reference(conv, x.detach(), True), **tolerance)


@needs_mkldnn
def test_fx_traces_the_plain_convolution_after_a_packed_call() -> None:
    """A layer that remembers its last packed call still gives fx the plain convolution: the
    repeated-call shortcut checks for tracing before it reads the input's shape."""
    conv = nn.Conv2d(3, 8, 3, padding=1).eval()
    model = nn.Sequential(PackedConv2d.from_conv(conv, relu=True)).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        model(x)
    assert model[0]._last_packed
    traced = torch.fx.symbolic_trace(model)
    assert F.conv2d in {node.target for node in traced.graph.nodes}
    with torch.no_grad():
        torch.testing.assert_close(traced(x), _reference(conv, x, True), rtol=1e-4, atol=1e-5)


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


def _ran_direct_kernel(fn) -> bool:
    """Whether calling ``fn`` ran deeprebirth::direct_conv (seen by the profiler)."""
    return "deeprebirth::direct_conv" in _ops_run(fn)


@needs_mkldnn
def test_calls_below_the_mac_threshold_take_the_direct_kernel(monkeypatch) -> None:
    """Below min_packed_macs: deeprebirth's direct kernel (ungrouped, undilated; eager and
    TorchScript), conv2d for dilated layers and in training; at the threshold the packed path.
    All equal conv2d (+ ReLU)."""
    conv = nn.Conv2d(8, 16, 5, padding=2).eval()
    packed = PackedConv2d.from_conv(conv, relu=True).eval()
    small, large = torch.randn(1, 8, 6, 6), torch.randn(2, 8, 12, 12)
    assert packed.macs(small.shape) == 1 * 16 * 6 * 6 * 8 * 25  # closed form: N C_out H W C_in k k
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", packed.macs(large.shape))
    with torch.no_grad():
        assert _ran_direct_kernel(lambda: packed(small))
        torch.testing.assert_close(packed(small), _reference(conv, small, True))
        assert not packed.packed_weights
        two_small = torch.cat([small, small])  # batch 2: still small
        assert _ran_direct_kernel(lambda: packed(two_small))
        torch.testing.assert_close(packed(two_small), _reference(conv, two_small, True))
        assert not _ran_direct_kernel(lambda: packed(large))
        torch.testing.assert_close(
            packed(large), _reference(conv, large, True), rtol=1e-4, atol=1e-5
        )
        assert list(packed.packed_weights)[0][0] == tuple(large.shape)
        dilated = PackedConv2d.from_conv(nn.Conv2d(8, 16, 5, padding=4, dilation=2)).eval()
        assert not _ran_direct_kernel(lambda: dilated(small))
        torch.testing.assert_close(dilated(small), _reference(dilated, small, False))
    training = PackedConv2d.from_conv(conv, relu=True)  # training mode: conv2d, differentiable
    assert not _ran_direct_kernel(lambda: training(small))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.freeze(torch.jit.script(PackedConv2d.from_conv(conv, True).eval()))
    with torch.no_grad():
        assert _ran_direct_kernel(lambda: scripted(small))  # TorchScript: the same kernel
        torch.testing.assert_close(scripted(small), _reference(conv, small, True))
        assert not _ran_direct_kernel(lambda: scripted(large))
        torch.testing.assert_close(
            scripted(large), _reference(conv, large, True), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("size, direct", [(8, True), (9, False)])
def test_1x1_layers_take_the_direct_kernel_up_to_max_direct_1x1_pixels(
    monkeypatch, size: int, direct: bool
) -> None:
    """A 1x1 layer's output of 8x8 = 64 pixels (max_direct_1x1_pixels) runs the direct kernel,
    9x9 conv2d (a GEMM over the pixels), eager and TorchScript."""
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", 1 << 22)
    conv = nn.Conv2d(32, 16, 1).eval()
    x = torch.randn(1, 32, size, size)
    packed = PackedConv2d.from_conv(conv, relu=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.freeze(torch.jit.script(PackedConv2d.from_conv(conv, True).eval()))
    with torch.no_grad():
        for module in (packed, scripted):
            assert _ran_direct_kernel(lambda module=module: module(x)) == direct
            torch.testing.assert_close(module(x), _reference(conv, x, True))


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


@pytest.mark.parametrize("trainable", ["bias", "residual", "add_into_residual"])
@pytest.mark.parametrize("relu", [False, True])
def test_gradients_reach_a_trainable_bias_or_residual_of_a_frozen_layer(
    trainable: str, relu: bool
) -> None:
    """oneDNN's ops have no derivative: a frozen weight with a bias or residual that requires grad
    (bias-only finetuning, a residual from trainable layers) takes the differentiable path, and
    the gradients equal conv2d's."""
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 6, 3, padding=1).eval()
    conv.weight.requires_grad_(False)
    conv.bias.requires_grad_(trainable == "bias")
    packed = PackedConv2d.from_conv(copy.deepcopy(conv), relu=relu).eval()
    x = torch.randn(1, 4, 8, 8)
    residual = torch.randn(1, 6, 8, 8, requires_grad=trainable != "bias")
    expected = _reference(conv, x, False) + residual
    expected = F.relu(expected) if relu else expected
    if trainable == "add_into_residual":
        actual = packed.add_into_(x, residual.clone())  # written over a non-leaf copy
    else:
        actual = packed(x, residual)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    leaf, reference_leaf = (packed.bias, conv.bias) if trainable == "bias" else (residual, residual)
    (gradient,) = torch.autograd.grad(actual.square().sum(), leaf)
    (expected_gradient,) = torch.autograd.grad(expected.square().sum(), reference_leaf)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-4, atol=1e-5)


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


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_add_into_writes_the_sum_over_the_residual(relu: bool, grad: bool, layout: str) -> None:
    """Packed (oneDNN's in-place sum) and plain paths: relu?(conv(x) + residual), in residual."""
    torch.manual_seed(6)
    conv = nn.Conv2d(6, 8, 3, padding=1).eval()
    packed = PackedConv2d.from_conv(conv, relu=relu).eval()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 6, 9, 9).contiguous(memory_format=fmt)
    residual = torch.randn(2, 8, 9, 9).contiguous(memory_format=fmt)
    expected = _reference(conv, x, False) + residual
    expected = F.relu(expected) if relu else expected
    with torch.set_grad_enabled(grad):
        actual = packed.add_into_(x, residual)
    assert actual.data_ptr() == residual.data_ptr()
    assert bool(packed.packed_weights) == (not grad and torch.backends.mkldnn.is_available())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def _bottleneck_stage() -> nn.Module:
    """torchvision's Bottleneck stage (downsampling first block + 2 identity blocks) with random
    BatchNorm statistics, inside a Sequential (a rule replaces submodules, not the model)."""
    from deeprebirth.compat.torchvision import import_torchvision

    resnet = import_torchvision().models.resnet
    torch.manual_seed(7)
    downsample = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    blocks = [resnet.Bottleneck(16, 8, stride=2, downsample=downsample)]
    blocks += [resnet.Bottleneck(32, 8) for _ in range(2)]
    return randomize_batchnorm(nn.Sequential(nn.Sequential(*blocks))).eval()


@needs_mkldnn
def test_packed_residual_stage_writes_blocks_over_their_inputs_exactly(monkeypatch) -> None:
    """A ResNet stage after fold_bn + pack_conv against torchvision's: same output, its input
    untouched, every block's last convolution accumulating in place (unless a hook may keep a
    block's output), TorchScript and the portable form."""
    original = _bottleneck_stage()
    x = torch.randn(2, 16, 12, 12)
    slim_model, report = deeprebirth.slim(original, ["fold_bn", "pack_conv"], x)
    stage = slim_model[0]
    assert isinstance(stage, PackedResidualStage), report
    assert [s.modules for s in report.applied if s.rule == "pack_conv"] == [("0",)]
    in_place_calls = []
    add_into = PackedConv2d.add_into_
    monkeypatch.setattr(
        PackedConv2d, "add_into_", lambda self, *a: in_place_calls.append(1) or add_into(self, *a)
    )
    x_before = x.clone()
    with torch.inference_mode():
        expected = original(x)
        torch.testing.assert_close(slim_model(x), expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(x, x_before)
        assert len(in_place_calls) == 3  # downsample's fresh output, then two scratch inputs

        kept = []  # a hook keeping block 1's output: block 2 must not overwrite it
        hook = stage[1].register_forward_hook(lambda module, inputs, output: kept.append(output))
        in_place_calls.clear()
        torch.testing.assert_close(slim_model(x), expected, rtol=1e-4, atol=1e-4)
        assert len(in_place_calls) == 2
        torch.testing.assert_close(kept[0], original[0][:2](x), rtol=1e-4, atol=1e-4)

    hook.remove()  # TorchScript compiles hooks and the class, not these test helpers
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(slim_model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-4)
    portable = make_portable(slim_model)
    assert type(portable[0]) is nn.Sequential
    assert deeprebirth.verify(original, portable, x).max_rel <= 1e-4


@needs_mkldnn
def test_frozen_torchscript_stage_accumulates_in_place_like_eager() -> None:
    """Frozen TorchScript (the C++ runner's path) adds each block's last convolution into the
    residual inside oneDNN, as eager does: no separate add or ReLU, the stage's input untouched,
    outputs equal torchvision's. A hook registered before scripting keeps its block's output
    from being overwritten."""
    original = _bottleneck_stage()
    x = torch.randn(2, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    slim_model, _ = deeprebirth.slim(original, ["fold_bn", "pack_conv"], x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated in torch >= 2.11
        frozen = torch.jit.freeze(torch.jit.script(slim_model))
    x_before = x.clone()
    with torch.no_grad():
        expected = original(x)
        frozen(x)
        with torch.profiler.profile() as prof:
            actual = frozen(x)
    ran = [as_onednn(event.name) for event in prof.events()]
    assert ran.count("mkldnn::_convolution_pointwise_") == 3, sorted(set(ran))
    assert "aten::add" not in ran and "aten::add_" not in ran, sorted(set(ran))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(x, x_before)

    stage = slim_model[0]
    assert stage.__prepare_scriptable__()._script_private_outputs == [True, True, True]
    hook = stage[1].register_forward_hook(lambda module, inputs, output: None)
    assert stage.__prepare_scriptable__()._script_private_outputs == [True, False, True]
    hook.remove()


def test_unfolded_residual_blocks_are_packed_layer_by_layer_with_the_reason() -> None:
    model = randomize_batchnorm(build_model("torchvision:resnet18", num_classes=10)).eval()
    report = deeprebirth.plan(model, torch.zeros(1, 3, 32, 32), rules=["pack_conv"])
    reasons = [s.reason for s in report.skipped]
    assert len(reasons) == 8 and all("run fold_bn first" in r for r in reasons)
    assert len(report.applied) == 21  # every convolution, one by one, and the classifier
    assert report.applied[-1].reason == "run fc with its output features split across the threads"


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
    assert packed and all(_packed_ran(m) for m in packed), "a packed path did not run"
    plain = [n for n, m in slim_model.named_modules() if type(m) is nn.Conv2d]
    assert not plain, f"{name}: convolutions left unpacked: {plain[:3]}"
    sites = [s for s in report.applied if s.rule == "pack_conv"]
    blocks = [m for m in slim_model.modules() if isinstance(m, PackedResidualBlock)]
    stages = [m for m in slim_model.modules() if isinstance(m, PackedResidualStage)]
    in_blocks = sum(1 for b in blocks for m in b.modules() if isinstance(m, PackedConv2d))
    lone_blocks = len(blocks) - sum(len(stage) for stage in stages)
    # Every packed conv outside the residual blocks is named by exactly one site (convolutions
    # that share one ReLU module, as an Inception module's branches after merge_branches, are one
    # site), and every block outside a stage and every stage by one.
    named = [slim_model.get_submodule(n) for site in sites for n in site.modules]
    assert sum(isinstance(m, PackedConv2d) for m in named) == len(packed) - in_blocks
    assert sum(isinstance(m, PackedResidualStage) for m in named) == len(stages)
    assert sum(isinstance(m, PackedResidualBlock) for m in named) == lone_blocks
    for site in sites:  # a fused ReLU is gone from the model and flagged on its convs
        *convs, last = [slim_model.get_submodule(n) for n in site.modules]
        if convs and isinstance(last, nn.Identity):
            assert all(isinstance(c, PackedConv2d) and c.relu for c in convs)
    # resnet's blocks (shared ReLU, residual add) become PackedResidualBlocks; mobilenet's
    # activations are ReLU6 and stay
    assert len(blocks) == (8 if name == "torchvision:resnet18" else 0)
    assert len(stages) == (4 if name == "torchvision:resnet18" else 0)  # layer1-4
    fuses = name in ("bvlc_googlenet", "torchvision:squeezenet1_1")
    assert any(len(s.modules) >= 2 for s in sites) == fuses
    # merge_branches joined 1x1 layers only: each is now one packed convolution
    assert not any(isinstance(m, BranchConv2d) for m in slim_model.modules())
    merged = [s for s in sites if "branches' weights" in s.reason]
    assert len(merged) == (9 if name == "bvlc_googlenet" else 0)  # one per Inception module
    again = deeprebirth.plan(slim_model, x, rules=["pack_conv"])
    assert not again.applied  # nothing left to pack
    portable = make_portable(slim_model)
    assert not any(isinstance(m, PackedConv2d) for m in portable.modules())
    assert deeprebirth.verify(model, portable, x).max_rel <= 1e-4


class _SharedReLU(nn.Module):
    """Two convolutions sharing one ReLU module (as bvlc_googlenet's Inception modules do);
    ``relu_after_add``: the second call reads a sum instead of a convolution."""

    def __init__(self, relu_after_add: bool) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 5, padding=2)
        self.relu, self.relu_after_add = nn.ReLU(), relu_after_add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.a(x))
        z = self.b(y)
        return self.relu(z + y if self.relu_after_add else z)


@pytest.mark.parametrize("relu_after_add", [False, True])
def test_a_shared_relu_is_fused_when_every_call_follows_a_convolution(relu_after_add) -> None:
    torch.manual_seed(8)
    model, x = _SharedReLU(relu_after_add).eval(), torch.randn(1, 3, 9, 9)
    slim_model, report = deeprebirth.slim(model, ["pack_conv"], x)
    fused = not relu_after_add
    assert isinstance(slim_model.relu, nn.Identity) == fused
    assert slim_model.a.relu == fused and slim_model.b.relu == fused
    if fused:
        assert [s.modules for s in report.applied] == [("a", "b", "relu")]
    assert deeprebirth.verify(model, slim_model, x).max_rel <= 1e-4
    student, _ = deeprebirth.slim(
        build_model("bvlc_googlenet", num_classes=10, width=0.25).eval(),
        ["streamline", "branch_slim"],
        torch.zeros(1, 3, 64, 64),
    )
    packed, _ = deeprebirth.slim(student.eval(), ["pack_conv"], torch.zeros(1, 3, 64, 64))
    assert all(isinstance(m.relu, nn.Identity) for m in packed.modules() if hasattr(m, "conv_5x5"))


def test_pack_conv_rule_skips_unpackable_convolutions_with_the_reason() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU()).eval()
    report = deeprebirth.plan(model, torch.zeros(1, 3, 8, 8), rules=["pack_conv"])
    assert not report.applied
    assert any("padding_mode='reflect'" in s.reason for s in report.skipped)


class _MixedBranches(nn.Module):
    """A 1x1 and a 3x3 branch over one input, merged by merge_branches into one BranchConv2d
    whose windows differ, and a 1x1 pair that shares one."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 3, 1), nn.Conv2d(4, 5, 3, padding=1)
        self.c, self.d = nn.Conv2d(8, 2, 1), nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        return torch.cat([self.c(y), self.d(y)], 1)


def test_pack_conv_packs_same_window_branch_convs_and_keeps_the_others() -> None:
    torch.manual_seed(2)
    model, x = _MixedBranches().eval(), torch.randn(2, 4, 9, 9)
    merged, _ = deeprebirth.slim(model, ["merge_branches"], x)
    branch_layers = [n for n, m in merged.named_modules() if isinstance(m, BranchConv2d)]
    assert len(branch_layers) == 2
    packed, report = deeprebirth.slim(merged, ["pack_conv"], x)
    left = [n for n, m in packed.named_modules() if isinstance(m, BranchConv2d)]
    assert len(left) == 1 and packed.get_submodule(left[0]).as_conv() is None
    assert any(left[0] in s.modules and "windows differ" in s.reason for s in report.skipped)
    joined = [n for n in branch_layers if n not in left]
    assert isinstance(packed.get_submodule(joined[0]), PackedConv2d)
    assert deeprebirth.verify(model, packed, x).max_rel <= 1e-4


@needs_mkldnn
@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("winograd", ["0", "1"])
def test_frozen_torchscript_runs_packed_onednn_weights(
    frozen: bool, winograd: str, monkeypatch
) -> None:
    """Frozen TorchScript (the C++ runner's path) keeps oneDNN's packed weights across calls, or
    runs this 3x3 layer with Winograd where that is chosen (forced here); a scripted module
    whose weights are still trainable parameters uses conv2d."""
    from torch.profiler import profile

    monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", winograd)
    torch.manual_seed(4)
    conv = nn.Conv2d(32, 48, 3, padding=1)
    packed = PackedConv2d.from_conv(conv, relu=True).eval()
    scripted = torch.jit.script(packed)
    module = torch.jit.freeze(scripted) if frozen else scripted
    x = torch.randn(2, 32, 20, 20)
    with torch.no_grad():
        module(x)
        with profile() as prof:
            actual = module(x)
    ran = {as_onednn(event.name) for event in prof.events()}
    onednn = frozen and winograd == "0"
    assert ("mkldnn::_convolution_pointwise" in ran) == onednn, sorted(ran)
    assert ("aten::convolution" in ran) == (not frozen), sorted(ran)
    torch.testing.assert_close(actual, F.relu(conv(x)), rtol=1e-4, atol=1e-5)
