"""deeprebirth.export.to_onednn_graph: the portable model as frozen TorchScript under the oneDNN
Graph fuser, checked against the eager model it came from."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import deeprebirth
from deeprebirth.export import OneDNNGraphModule, load_exported, to_onednn_graph
from deeprebirth.export.onednn_graph import onednn_fusion
from deeprebirth.models import build_model
from deeprebirth.nn import BranchConv2d, ConvPool2d

# The rules that give a deployed model deeprebirth's operators (exact: outputs unchanged).
EXACT_RULES = ["fold_bn", "fuse_conv_pool", "merge_branches"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SIZE = 64


def _example(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))


def _googlenet(rules: list[str]) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("bvlc_googlenet", num_classes=10, width=0.25).eval()
    slim, _ = deeprebirth.slim(model, rules, _example())
    return slim.eval()


def _slim_googlenet() -> nn.Module:
    """GoogLeNet-Slim with the exact rules: it holds BranchConv2d."""
    return _googlenet(["streamline", "branch_slim", *EXACT_RULES])


def _exact_googlenet() -> nn.Module:
    """bvlc GoogLeNet with the exact rules only: ConvPool2d, BranchConv2d and its LRNs."""
    return _googlenet(EXACT_RULES)


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", num_classes=10).eval()
    slim, _ = deeprebirth.slim(model, list(EXACT_RULES), _example())
    return slim.eval()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


HELD = {
    _slim_googlenet: {BranchConv2d},
    _exact_googlenet: {ConvPool2d, BranchConv2d},
    _resnet: {ConvPool2d},  # merge_branches leaves ResNet blocks whole (mixed activations)
}


@pytest.mark.parametrize("build", list(HELD), ids=["googlenet_slim", "googlenet_exact", "resnet18"])
def test_fused_module_gives_the_eager_outputs(build):
    """Forced fusion: oneDNN partitions really replace the layers, outputs stay within 1e-4
    relative of the eager model (deeprebirth operators and LRN included), at the example's batch
    and another, and the process-wide fuser switch is back off afterwards."""
    model = build()
    assert {type(m) for m in model.modules()} & {ConvPool2d, BranchConv2d} == HELD[build]
    fused = to_onednn_graph(model, _example(), measure=False)
    assert isinstance(fused, OneDNNGraphModule) and fused.fused
    for x in (_example(), _example(1)):
        with torch.no_grad():
            expected = model(x)
            got = fused(x)
            fused(x)  # the optimized plan of this shape
            got_again = fused(x)
        assert _relative(got, expected) < 1e-4 and _relative(got_again, expected) < 1e-4
    # Each shape runs its own copy (a plan fused for batch 2 would fall back to unfused ATen
    # convolutions at batch 1), and both copies hold fused partitions.
    first, second = fused._copy_for(_example()), fused._copy_for(_example(1))
    assert first is fused.module and second is not first
    with onednn_fusion():
        for copy, x in ((first, _example()), (second, _example(1))):
            assert "oneDNNFusionGroup" in str(copy.graph_for(x))
    assert not torch.jit.onednn_fusion_enabled()


def test_measured_choice_keeps_the_outputs():
    """With measurement (the default) either form may win; the choice names both medians, and
    the module kept gives the eager outputs. bvlc GoogLeNet holds LRN (the rewrite the fuser runs
    with oneDNN's reference kernel)."""
    torch.manual_seed(0)
    model = build_model("bvlc_googlenet", num_classes=10, width=0.25).eval()
    chosen = to_onednn_graph(model, _example(), rounds=3)
    assert "ms fused vs" in chosen.choice and "ms unfused" in chosen.choice
    assert chosen.choice.startswith("fused" if chosen.fused else "not fused")
    with torch.no_grad():
        assert _relative(chosen(_example()), model(_example())) < 1e-4
    with pytest.raises(ValueError, match="rounds >= 1"):
        to_onednn_graph(model, _example(), rounds=0)
    with pytest.raises(ValueError, match="max_shapes >= 1"):
        OneDNNGraphModule(chosen.module, fused=False, max_shapes=0)


def test_fusion_switch_is_scoped_and_shared():
    """The switch is on inside any block, concurrent blocks included, and goes back to what it
    was when the last ends: a caller's own setting survives."""
    assert not torch.jit.onednn_fusion_enabled()
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with onednn_fusion():
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    inside.wait(10)
    with onednn_fusion():
        assert torch.jit.onednn_fusion_enabled()
    assert torch.jit.onednn_fusion_enabled()  # the other block still runs
    release.set()
    worker.join()
    assert not torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        with onednn_fusion():
            pass
        assert torch.jit.onednn_fusion_enabled()
    finally:
        torch.jit.enable_onednn_fusion(False)


def test_load_exported_runs_portable_torchscript_fused(tmp_path):
    """A portable TorchScript file loads fused and gives the eager outputs; a native one (with
    deeprebirth operators, which stop the fuser) or another format is refused by name."""
    model, x = _slim_googlenet(), _example()
    portable = deeprebirth.export(model, x, "torchscript", portable=True, out=tmp_path / "p.ts")
    native = deeprebirth.export(model, x, "torchscript", out=tmp_path / "n.ts")
    onnx = deeprebirth.export(model, x, "onnx", out=tmp_path / "m.onnx")
    run = load_exported(portable, onednn_graph=True)
    with torch.no_grad():
        expected = model(x)
    for _ in range(3):
        assert _relative(run(x), expected) < 1e-4
    for path, kind in ((native, "is torchscript"), (onnx, "is portable onnx")):
        with pytest.raises(ValueError, match=kind):
            load_exported(path, onednn_graph=True)


def test_shape_copies_are_bounded():
    """At most ``max_shapes`` copies stay (least recently used go); evicted shapes come back as
    fresh copies with the same outputs."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    fused = to_onednn_graph(net, _example(), measure=False)
    fused.max_shapes = 2
    with torch.no_grad():
        for batch in (1, 3, 2, 1):
            x = _example(batch)
            assert _relative(fused(x), net(x)) < 1e-5
    assert [key[0][0] for key in fused._copies] == [2, 1]
