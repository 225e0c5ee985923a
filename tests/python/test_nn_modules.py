"""Every module of deeprebirth.nn with a ``to_standard()`` converts to standard layers exactly, and
``make_portable`` leaves none of them in a model.

The reference is each module's own forward (deeprebirth's operators, oneDNN on packed weights, the
direct kernel), an independent path from the standard layers ``to_standard()`` returns.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import deeprebirth.nn
from deeprebirth.export import make_portable, uses_deeprebirth_ops
from deeprebirth.nn import (
    BranchConv2d,
    ConvPool2d,
    InferenceLinear,
    InferenceMaxPool2d,
    LocalResponseNorm2d,
    PackedConv2d,
    PackedConvConcat,
    PackedResidualBlock,
    PackedResidualStage,
)

Inputs = torch.Tensor | list[torch.Tensor]

EXPORTED = [
    obj
    for obj in (getattr(deeprebirth.nn, name) for name in deeprebirth.nn.__all__)
    if isinstance(obj, type)
]


def _has_to_standard(cls: type) -> bool:
    return callable(getattr(cls, "to_standard", None))


CONVERTIBLE = {cls for cls in EXPORTED if _has_to_standard(cls)}
#: The standard forms: compositions of standard layers that to_standard() may return.
STANDARD_FORMS = {cls for cls in EXPORTED if not _has_to_standard(cls)}


def _packed(conv: nn.Conv2d, relu: bool, oneDNN: bool = False) -> PackedConv2d:
    packed = PackedConv2d.from_conv(conv, relu=relu)
    if oneDNN:  # every call takes oneDNN's packed path, however small
        packed.min_packed_macs = 0
    return packed


def _conv_pool_max() -> tuple[nn.Module, Inputs]:
    conv, pool = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.MaxPool2d(3, 2, 1, ceil_mode=True)
    return ConvPool2d.from_modules(conv, pool, relu=True), torch.randn(2, 3, 17, 15)


def _conv_pool_avg() -> tuple[nn.Module, Inputs]:
    conv, pool = nn.Conv2d(12, 16, 3, padding=1, bias=False), nn.AvgPool2d(2, padding=1)
    return ConvPool2d.from_modules(conv, pool, relu=False), torch.randn(1, 12, 9, 9)


def _branch_conv() -> tuple[nn.Module, Inputs]:
    convs = [nn.Conv2d(8, 4, 1), nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(8, 2, 5, padding=2)]
    return BranchConv2d.from_convs(convs, relu=True), torch.randn(2, 8, 9, 7)


def _branch_conv_one_window() -> tuple[nn.Module, Inputs]:
    convs = [nn.Conv2d(8, c, 1, stride=2) for c in (4, 6, 2)]  # merged Inception 1x1 layers
    return BranchConv2d.from_convs(convs, relu=True), torch.randn(2, 8, 9, 7)


def _packed_conv_direct() -> tuple[nn.Module, Inputs]:
    return _packed(nn.Conv2d(8, 16, 3, padding=1), relu=True), torch.randn(1, 8, 8, 8)


def _packed_conv_onednn() -> tuple[nn.Module, Inputs]:
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
    return _packed(conv, relu=False, oneDNN=True), torch.randn(2, 8, 11, 9)


def _packed_conv_concat() -> tuple[nn.Module, Inputs]:
    convs = [nn.Conv2d(8, 4, 1), nn.Conv2d(6, 5, 3, padding=1)]
    module = PackedConvConcat([_packed(conv, relu=True) for conv in convs])
    return module, [torch.randn(1, 8, 6, 6), torch.randn(1, 6, 6, 6)]


def _inference_max_pool() -> tuple[nn.Module, Inputs]:
    x = torch.randn(2, 16, 9, 11).contiguous(memory_format=torch.channels_last)
    return InferenceMaxPool2d(3, 2, 1, ceil_mode=True), x


def _bottleneck_convs() -> tuple[list[nn.Conv2d], nn.Conv2d]:
    convs = [nn.Conv2d(8, 4, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 16, 1)]
    return convs, nn.Conv2d(8, 16, 1)


def _residual_block_downsample() -> tuple[nn.Module, Inputs]:
    convs, shortcut = _bottleneck_convs()
    return PackedResidualBlock(convs, shortcut), torch.randn(1, 8, 7, 7)


def _residual_block_identity() -> tuple[nn.Module, Inputs]:
    convs = [nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)]
    return PackedResidualBlock(convs), torch.randn(2, 8, 6, 6)


def _residual_stage() -> tuple[nn.Module, Inputs]:
    convs, shortcut = _bottleneck_convs()
    blocks = [PackedResidualBlock(convs, shortcut)]
    for _ in range(2):
        blocks.append(PackedResidualBlock([nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 3, padding=1)]))
    for block in blocks:  # every block on oneDNN's path, where the stage writes in place
        for module in block.modules():
            if isinstance(module, PackedConv2d):
                module.min_packed_macs = 0
    return PackedResidualStage(*blocks), torch.randn(1, 8, 6, 6)


def _inference_linear():
    return InferenceLinear.from_linear(nn.Linear(48, 20)), torch.randn(2, 3, 48)


CASES: dict[str, Callable[[], tuple[nn.Module, Inputs]]] = {
    "conv_pool_max": _conv_pool_max,
    "conv_pool_avg": _conv_pool_avg,
    "branch_conv": _branch_conv,
    "branch_conv_one_window": _branch_conv_one_window,
    "packed_conv_direct": _packed_conv_direct,
    "packed_conv_onednn": _packed_conv_onednn,
    "packed_conv_concat": _packed_conv_concat,
    "inference_max_pool": _inference_max_pool,
    "inference_linear": _inference_linear,
    "residual_block_downsample": _residual_block_downsample,
    "residual_block_identity": _residual_block_identity,
    "residual_stage": _residual_stage,
}


def _build(case: str) -> tuple[nn.Module, Inputs]:
    torch.manual_seed(0)
    module, x = CASES[case]()
    for p in module.parameters():  # nonzero biases, so that a dropped bias shows
        if p.dim() == 1:
            nn.init.uniform_(p, -0.5, 0.5)
    return module.eval(), x


def _call(module: nn.Module, x: Inputs) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _assert_standard(module: nn.Module, allowed: tuple[type, ...] = ()) -> None:
    for name, m in module.named_modules():
        kind = type(m)
        assert kind not in CONVERTIBLE and not _has_to_standard(kind), f"{name}: {kind.__name__}"
        assert kind.__module__.startswith("torch.") or kind in STANDARD_FORMS or kind in allowed, (
            f"{name}: {kind.__module__}.{kind.__qualname__} is not a standard layer"
        )


def _calls_deeprebirth_ops(module: nn.Module) -> bool:
    return "deeprebirth::" in str(torch.jit.script(module).inlined_graph)


def test_every_module_with_to_standard_has_a_case() -> None:
    built = {type(CASES[case]()[0]) for case in CASES}
    assert built == CONVERTIBLE
    assert LocalResponseNorm2d in STANDARD_FORMS  # the portable form of nn.LocalResponseNorm


@pytest.mark.parametrize("case", CASES)
def test_to_standard_is_standard_layers_computing_the_same(case: str) -> None:
    module, x = _build(case)
    expected = _call(module, x)
    standard = module.to_standard()
    _assert_standard(standard)
    assert not uses_deeprebirth_ops(standard)
    torch.testing.assert_close(_call(standard.eval(), x), expected, rtol=1e-4, atol=1e-5)
    # The module itself runs deeprebirth's operators under TorchScript; its standard form does not.
    assert _calls_deeprebirth_ops(module)
    assert not _calls_deeprebirth_ops(standard)


class _Holder(nn.Module):
    """A model holding the module twice deep: ``head(body[0](x))``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(module)
        self.head = nn.Identity()

    def forward(self, x: Inputs) -> torch.Tensor:
        return self.head(self.body[0](x))


@pytest.mark.parametrize("case", CASES)
def test_make_portable_leaves_none_of_them(case: str) -> None:
    module, x = _build(case)
    model = _Holder(module).eval()
    expected = _call(model, x)
    portable = make_portable(model)
    _assert_standard(portable, allowed=(_Holder,))
    assert not uses_deeprebirth_ops(portable)
    assert model.body[0] is module  # the input model is not modified
    torch.testing.assert_close(_call(portable, x), expected, rtol=1e-4, atol=1e-5)
    # the module as the model itself
    root = make_portable(module)
    _assert_standard(root)
    torch.testing.assert_close(_call(root, x), expected, rtol=1e-4, atol=1e-5)


def test_make_portable_rewrites_local_response_norm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 9, 1), nn.LocalResponseNorm(5, 1e-3, 0.75, 2.0)).eval()
    x = torch.randn(2, 3, 5, 5)
    portable = make_portable(model)
    assert isinstance(portable[1], LocalResponseNorm2d)
    assert not any(type(m) is nn.LocalResponseNorm for m in portable.modules())
    torch.testing.assert_close(_call(portable, x), _call(model, x))


def test_former_homes_still_name_the_modules() -> None:
    """Imports and pickles made before deeprebirth.nn keep working."""
    import importlib

    def old(module: str, name: str) -> type:  # as pickle finds a class
        return getattr(importlib.import_module(module), name)

    assert old("deeprebirth.ops", "ConvPool2d") is old("deeprebirth.ops.conv_pool", "ConvPool2d")
    assert old("deeprebirth.ops.conv_pool", "ConvPool2d") is ConvPool2d
    assert old("deeprebirth.ops", "BranchConv2d") is BranchConv2d
    assert old("deeprebirth.ops.branch_conv", "BranchConv2d") is BranchConv2d
    assert old("deeprebirth.export.portable", "LocalResponseNorm2d") is LocalResponseNorm2d
    for name in ("PackedConv2d", "PackedConvConcat", "PackedResidualBlock", "PackedResidualStage"):
        assert old("deeprebirth.surgery.modules", name) is getattr(deeprebirth.nn, name)


def _op_targets(graph: torch.fx.Graph) -> set[str]:
    return {str(node.target) for node in graph.nodes if node.op == "call_function"}


@pytest.mark.parametrize("case", CASES)
def test_torch_compile_traces_one_graph_of_standard_operators(case: str) -> None:
    """Inductor gets what it can fuse (the module's standard form), in one graph that a second
    call reuses; ``torch.export`` still records deeprebirth's operators (``format="pt2"``)."""
    module, x = _build(case)
    expected = _call(module, x)
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(module, backend=record, fullgraph=True)
    first, second = _call(compiled, x), _call(compiled, x)
    assert len(graphs) == 1
    targets = _op_targets(graphs[0].graph)
    assert targets and not any("deeprebirth" in target for target in targets), targets
    torch.testing.assert_close(first, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-5)
    if isinstance(module, (ConvPool2d, BranchConv2d)):
        with torch.no_grad():
            program = torch.export.export(module, (x,))
        assert any("deeprebirth" in target for target in _op_targets(program.graph))
    if case == "branch_conv_one_window":  # one convolution is the output: no cat of outputs
        convs = [n for n in graphs[0].graph.nodes if "conv2d" in str(n.target)]
        (result,) = graphs[0].graph.output_node().args[0]
        assert len(convs) == 1 and "relu" in str(result.target) and result.args[0] is convs[0]
