"""Deployment formats (ExecuTorch with XNNPACK, OpenVINO, ONNX) agree with the eager model, and
the portable graph they start from holds the model's layers and nothing else.

Models (random weights, 64x64 input, 10 classes): ``googlenet`` (bvlc_googlenet, width 0.25,
with its two LocalResponseNorms); ``googlenet_slim``, GoogLeNet-Slim straight from
``deeprebirth.slim`` with the paper's rules and the exact ones (it holds BranchConv2d);
torchvision's ``resnet18`` (random BatchNorm statistics) and ``squeezenet1_1``. Each is exported
once per format (:class:`export_cache.ExportCache`) from a one-image example, as ``deeprebirth export`` does.

Checked: each format's logits equal eager within 1e-4 of the largest logit (f32), on a batch of
two; the .pte files of GoogLeNet-Slim and bvlc_googlenet are one XNNPACK call and nothing else
(read from the file's execution plan) and the export says so; the portable ONNX / torch.export
graphs of GoogLeNet-Slim hold no ScatterND / Transpose / Shape / Slice / slice_scatter; the LRN
rewrite equals nn.LocalResponseNorm; models that call deeprebirth's operators directly are
decomposed exactly; bad options and missing runtimes give messages that say what to do.
"""

from __future__ import annotations

import collections
import contextlib
import io
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _surgery_helpers import randomize_batchnorm
from export_cache import ExportCache
from torch import nn

import deeprebirth
import deeprebirth.io
from deeprebirth.compat.torchvision import import_torchvision
from deeprebirth.export import FORMATS, load_exported, make_portable, read_metadata
from deeprebirth.export.concat import distribute_concatenations
from deeprebirth.export.portable import LocalResponseNorm2d
from deeprebirth.models import bvlc_googlenet
from deeprebirth.ops import BranchConv2d, branch_conv, conv_pool

pytest.importorskip("executorch", reason="pip install deeprebirth[deploy]")
pytest.importorskip("openvino", reason="pip install deeprebirth[deploy]")

pytestmark = [
    pytest.mark.filterwarnings("ignore:torchvision's C\\+\\+ operators"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    # executorch 1.4 reads its resources with importlib.resources' deprecated functions
    pytest.mark.filterwarnings(r"ignore:.*is deprecated. Use files\(\) instead:DeprecationWarning"),
]

SIZE, CLASSES, RTOL = 64, 10, 1e-4
PAPER_RULES = ["streamline", "branch_slim", "fold_bn", "fuse_conv_pool", "merge_branches"]
DEPLOY_FORMATS = ("executorch", "openvino", "onnx")
SUFFIX = {"executorch": "pte", "openvino": "xml", "onnx": "onnx"}


# ---- models -------------------------------------------------------------------------------


def _googlenet() -> nn.Module:
    torch.manual_seed(0)
    return bvlc_googlenet(num_classes=CLASSES, width=0.25, init="kaiming").eval()


def _small_googlenet() -> nn.Module:
    """For the tests that only need some model file: bvlc_googlenet at width 0.125."""
    torch.manual_seed(0)
    return bvlc_googlenet(num_classes=CLASSES, width=0.125, init="kaiming").eval()


def _googlenet_slim() -> nn.Module:
    slim_model, _ = deeprebirth.slim(_googlenet(), PAPER_RULES, torch.zeros(1, 3, SIZE, SIZE))
    assert any(isinstance(m, BranchConv2d) for m in slim_model.modules())
    return slim_model.eval()


def _torchvision(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(import_torchvision().models, name)(num_classes=CLASSES)
    return randomize_batchnorm(model).eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "googlenet": _googlenet,
    "googlenet_slim": _googlenet_slim,
    "resnet18": lambda: _torchvision("resnet18"),
    "squeezenet1_1": lambda: _torchvision("squeezenet1_1"),
}


def _example() -> torch.Tensor:
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def _batch() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("deploy"), MODELS, _example, suffix=SUFFIX)


def _assert_relative_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    error = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert scale > 0 and error <= RTOL * scale, f"max error {error:.3g} vs largest {scale:.3g}"


def _forward_plan(pte: Path):
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(pte.read_bytes()).program
    return next(plan for plan in program.execution_plan if plan.name == "forward")


# ---- each format gives the eager logits ---------------------------------------------------


@pytest.mark.parametrize("format", DEPLOY_FORMATS)
@pytest.mark.parametrize("name", list(MODELS))
def test_deploy_formats_give_the_eager_logits(name, format, exports):
    """ExecuTorch (XNNPACK), OpenVINO (f32) and ONNX Runtime == eager within 1e-4 relative."""
    path = exports.file(name, format)
    x = _batch()
    with torch.no_grad():
        expected = exports.model(name)(x)
    _assert_relative_close(load_exported(path)(x), expected)
    record = read_metadata(path)
    assert (record.format, record.source_model, record.portable) == (format, name, True)
    assert record.input_size == [SIZE, SIZE]


@pytest.mark.parametrize("name", ["googlenet_slim", "googlenet"])
def test_pte_is_one_xnnpack_subgraph(name, exports):
    """The forward plan is one XNNPACK delegate call and no portable kernel, as printed."""
    plan = _forward_plan(exports.file(name, "executorch"))
    assert [d.id for d in plan.delegates] == ["XnnpackBackend"]
    assert [op.name for op in plan.operators] == []
    assert len(plan.chains[0].instructions) == 1
    printed = exports.printed[name, "executorch"]
    delegated, total = printed.split("XNNPACK: ")[1].split(" nodes")[0].split("/")
    assert int(delegated) == int(total) > 0 and "in 1 subgraph\n" in printed


def test_pte_runs_with_the_thread_count_asked_for(exports):
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    path, x = exports.file("googlenet_slim", "executorch"), _batch()
    with torch.no_grad():
        expected = exports.model("googlenet_slim")(x)
    try:
        run = load_exported(path, num_threads=1)
        assert _threadpool_get_thread_count() == 1
        _assert_relative_close(run(x), expected)
    finally:
        run_2 = load_exported(path, num_threads=2)
    assert _threadpool_get_thread_count() == 2
    # Both runners stay usable: the resize freed the pool `run` was loaded with (running a method
    # on it crashed the process), so it loads its method again.
    _assert_relative_close(run(x), expected)
    _assert_relative_close(run_2(x), expected)
    with pytest.raises(ValueError, match=r"runs inputs of shape \[1, 3, 64, 64\]"):
        run(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="num_threads"):
        load_exported(path, num_threads=0)


# ---- the portable graph is the model's layers ---------------------------------------------


def test_portable_googlenet_slim_graphs_are_clean(exports):
    """No scatter, slice, transpose or shape arithmetic: the convolutions, ReLUs, pools and one
    cat per Inception module (the views of merged branches become the branch convolutions); the
    ONNX file holds exactly the layers of that graph once its concatenations are distributed."""
    import onnx

    model = exports.model("googlenet_slim")
    inceptions = sum(name.startswith("inception_") for name, _ in model.named_children())
    convs = sum(isinstance(m, nn.Conv2d) for m in _googlenet().modules())
    program = torch.export.export(make_portable(model).eval(), (_example(),))
    targets = _targets(program)
    assert not [t for t in targets if "slice" in t or "narrow" in t or "scatter" in t], targets
    assert targets["aten.cat.default"] == inceptions
    # branch_slim removed two of each Inception module's six convolutions
    assert targets["aten.conv2d.default"] == convs - 2 * inceptions

    proto = onnx.load(str(exports.file("googlenet_slim", "onnx")))
    ops = collections.Counter(node.op_type for node in proto.graph.node)
    assert not {"ScatterND", "Transpose", "Shape", "Slice", "Gather"} & set(ops), ops
    distributed = _targets(distribute_concatenations(program))
    assert distributed["aten.cat.default"] < inceptions
    assert ops["Concat"] == distributed["aten.cat.default"]
    assert ops["Conv"] == distributed["aten.conv2d.default"]


def _targets(program: torch.export.ExportedProgram) -> collections.Counter[str]:
    return collections.Counter(
        str(n.target) for n in program.graph.nodes if n.op == "call_function"
    )


class _OldMergedBlock(nn.Module):
    """What merge_branches wrote before it removed fused ReLUs: the operator applies the ReLU and
    an in-place ReLU runs again on each narrow view."""

    def __init__(self) -> None:
        super().__init__()
        convs = [nn.Conv2d(6, 4, 1), nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(6, 3, 1)]
        self.merged = BranchConv2d.from_convs(convs, relu=True)
        self.conv = nn.Conv2d(4, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.merged(x)
        a = self.relu(torch.narrow(y, 1, 0, 4))
        b = self.relu(torch.narrow(y, 1, 4, 5))
        c = torch.narrow(y, 1, 9, 3)
        return torch.cat([self.conv(a), b, c + c.relu()], 1)


def test_branch_views_become_convolutions_without_repeated_relus():
    from deeprebirth.surgery.trace import trace_module

    block = _OldMergedBlock().eval()
    portable = make_portable(trace_module(block))
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(portable(x), block(x))
    assert not any(isinstance(m, BranchConv2d) for m in portable.modules())
    targets = collections.Counter(
        str(n.target)
        for n in torch.export.export(portable, (x,)).graph.nodes
        if n.op == "call_function"
    )
    assert targets["aten.conv2d.default"] == 4
    # one per branch (the operator's); the ones repeated on a, b and c are gone
    assert targets["aten.relu.default"] + targets["aten.relu_.default"] == 3
    assert not [t for t in targets if "slice" in t or "narrow" in t or "scatter" in t], targets


# ---- LocalResponseNorm --------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, alpha, beta, k, channels",
    [
        (5, 1e-4, 0.75, 1.0, 64),  # Caffe's GoogLeNet LRN
        (5, 1.0, 0.75, 1.0, 7),  # alpha large enough that the sum matters
        (3, 0.5, 0.5, 2.0, 13),
        (4, 0.1, 1.0, 1.0, 5),  # even window: padded unevenly
        (1, 1.0, 0.75, 0.5, 3),
        (6, 0.3, 0.6, 1.5, 17),
        (9, 2.0, 2.0, 1.0, 4),  # window wider than the channels
    ],
)
def test_lrn_rewrite_equals_local_response_norm(size, alpha, beta, k, channels):
    generator = torch.Generator().manual_seed(size * 100 + channels)
    lrn = nn.LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
    rewrite = make_portable(nn.Sequential(lrn))[0]
    assert isinstance(rewrite, LocalResponseNorm2d)
    for shape in [(2, channels, 5, 6), (1, channels, 1, 9)]:
        x = torch.randn(*shape, generator=generator) * 3
        torch.testing.assert_close(rewrite(x), lrn(x), rtol=1e-6, atol=0)
        torch.testing.assert_close(rewrite(x), F.local_response_norm(x, size, alpha, beta, k))


def test_portable_googlenet_has_no_avg_pool3d():
    model = _googlenet()
    program = torch.export.export(make_portable(model), (_example(),)).run_decompositions()
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.avg_pool2d.default" in targets
    assert not [t for t in targets if "pool3d" in t or "pow" in t], targets
    assert any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())  # not modified


# ---- deeprebirth's operators are decomposed exactly ---------------------------------------


class _CallsOperators(nn.Module):
    """deeprebirth's operators called directly, so no module of theirs is there to replace."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b = nn.Parameter(torch.randn(8) * 0.1)
        self.branch_weights = nn.ParameterList(
            [nn.Parameter(torch.randn(4, 8, 1, 1) * 0.3), nn.Parameter(torch.randn(6, 8, 3, 3))]
        )
        self.conv = nn.Conv2d(10, 10, 3, padding=1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.deeprebirth
        y = conv_pool(x, self.w, self.b, padding=1, pool="max", pool_kernel=2, relu=True)
        y = branch_conv(y, list(self.branch_weights), relu=True)
        y = ops.onednn_conv2d(y, self.conv.weight, self.conv.bias, [1, 1], [1, 1], [1, 1], 1, True)
        y = ops.max_pool2d(y, [3, 3], [2, 2], [1, 1], True)
        return ops.linear(y.flatten(2).amax(2), self.fc.weight, self.fc.bias)


def test_models_calling_the_operators_export_exactly(tmp_path):
    from deeprebirth.export.executorch import export_for_executorch

    model = _CallsOperators().eval()
    x = torch.randn(1, 3, 16, 16)
    program = export_for_executorch(model, x)
    namespaces = {getattr(n.target, "namespace", "") for n in program.graph.nodes}
    assert "deeprebirth" not in namespaces
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-6)
    for format in ("executorch", "openvino"):
        with contextlib.redirect_stdout(io.StringIO()):
            path = deeprebirth.export(model, x, format, out=tmp_path / f"ops.{SUFFIX[format]}")
        _assert_relative_close(load_exported(path)(x), expected)


def test_require_full_delegation_names_the_operators_left_out(tmp_path):
    """LRN with beta 0.6 keeps pow, which XNNPACK takes only for the exponent 2."""
    from deeprebirth.export.executorch import DelegationError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LocalResponseNorm(3, beta=0.6)).eval()
    x, out = torch.randn(1, 3, 12, 12), tmp_path / "lrn.pte"
    with pytest.raises(DelegationError, match=r"aten\.pow\.Tensor_Scalar x1") as caught:
        deeprebirth.export(model, x, "executorch", out=out, require_full_delegation=True)
    assert "was not written" in str(caught.value) and not out.exists()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        deeprebirth.export(model, x, "executorch", out=out)
    assert "left to ExecuTorch's portable kernels: aten.pow.Tensor_Scalar x1" in printed.getvalue()
    assert [op.name for op in _forward_plan(out).operators] == ["aten::pow"]
    with torch.no_grad():
        _assert_relative_close(load_exported(out)(x), model(x))


def test_openvino_bf16_warns_and_is_stored(tmp_path):
    import openvino

    model, x = _small_googlenet(), _example()
    with pytest.warns(UserWarning, match=r"bf16 inference moves the outputs by .* f32 by"):
        path = deeprebirth.export(model, x, "openvino", out=tmp_path / "g.xml", precision="bf16")
    ir = openvino.Core().read_model(str(path))
    assert ir.get_rt_info(["deeprebirth", "inference_precision"]).astype(str) == "bf16"
    assert path.with_suffix(".bin").is_file()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f32 = deeprebirth.export(model, x, "openvino", out=tmp_path / "f.xml")
    assert not [w for w in caught if "bf16" in str(w.message)]
    ir = openvino.Core().read_model(str(f32))
    assert ir.get_rt_info(["deeprebirth", "inference_precision"]).astype(str) == "f32"


# ---- bad input ----------------------------------------------------------------------------


def test_bad_formats_and_options_say_what_is_accepted(tmp_path, capsys):
    from deeprebirth.cli import main

    model, x = nn.Sequential(nn.Conv2d(3, 2, 1)).eval(), torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="expected format to be one of") as caught:
        deeprebirth.export(model, x, "tflite", out=tmp_path / "m")
    assert all(f"'{name}'" in str(caught.value) for name in FORMATS)
    assert "executorch" in FORMATS and "openvino" in FORMATS
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "m.pt", "--format", "tflite", "--out", str(tmp_path / "m")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tflite'" in err and "executorch" in err and "openvino" in err

    with pytest.raises(ValueError, match="require_full_delegation applies to format='executorch'"):
        deeprebirth.export(model, x, "onnx", out=tmp_path / "m.onnx", require_full_delegation=True)
    with pytest.raises(ValueError, match="precision applies to format='openvino'"):
        deeprebirth.export(model, x, "executorch", out=tmp_path / "m.pte", precision="bf16")
    with pytest.raises(ValueError, match=r"precision to be one of \('f32', 'bf16'\)"):
        deeprebirth.export(model, x, "openvino", out=tmp_path / "m.xml", precision="fp16")
    with pytest.raises(ValueError, match=r"out to end in \.xml"):
        deeprebirth.export(model, x, "openvino", out=tmp_path / "m.ir")


@pytest.mark.parametrize(
    "format, package", [("executorch", "executorch"), ("openvino", "openvino")]
)
def test_missing_runtime_names_the_package_and_the_extra(format, package, tmp_path, monkeypatch):
    model, x = nn.Sequential(nn.Conv2d(3, 2, 1)).eval(), torch.randn(1, 3, 4, 4)
    with contextlib.redirect_stdout(io.StringIO()):
        written = deeprebirth.export(model, x, format, out=tmp_path / f"m.{SUFFIX[format]}")
    monkeypatch.setitem(sys.modules, package, None)  # what `import <package>` sees when absent
    for attempt in (
        lambda: deeprebirth.export(model, x, format, out=tmp_path / f"n.{SUFFIX[format]}"),
        lambda: load_exported(written),
    ):
        with pytest.raises(ImportError) as caught:
            attempt()
        message = str(caught.value)
        assert f"'{package}' package" in message and "pip install deeprebirth[deploy]" in message
    assert not (tmp_path / f"n.{SUFFIX[format]}").exists()


def test_cli_exports_executorch_and_openvino(tmp_path, capsys):
    from deeprebirth.cli import main

    checkpoint = tmp_path / "g.pt"
    deeprebirth.io.save_model(
        checkpoint,
        _small_googlenet(),
        {"source_model": "bvlc_googlenet", "input_size": [SIZE, SIZE]},
    )
    pte = tmp_path / "g.pte"
    args = ["export", str(checkpoint), "--format", "executorch", "--out", str(pte)]
    assert main([*args, "--require-full-delegation"]) == 0
    out = capsys.readouterr().out
    assert "XNNPACK:" in out and "in 1 subgraph" in out and f"wrote {pte}" in out
    xml = tmp_path / "g.xml"
    assert main(["export", str(checkpoint), "--format", "openvino", "--out", str(xml)]) == 0
    for path in (pte, xml):
        record = read_metadata(path)
        assert (record.source_model, record.input_size) == ("bvlc_googlenet", [SIZE, SIZE])
    assert main(["export", str(checkpoint), "--format", "onnx", "--precision", "bf16", "--out",
                 str(tmp_path / "g.onnx")]) == 2  # fmt: skip
    assert "precision applies to format='openvino'" in capsys.readouterr().err
