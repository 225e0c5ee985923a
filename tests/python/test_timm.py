"""timm models: ``build_model("timm:<name>")``, ``import_timm`` and the exact rules on timm's
norm-act layers (``BatchNormAct2d``: BatchNorm, then its own ``drop`` and ``act``).

References: the unmodified timm model on the same input (random weights, randomised BatchNorm
statistics so that folding is not the identity); which BatchNorms read a conv output, recorded
with forward hooks in eager mode (independent of the fx graph the rules use); closed-form
``F.batch_norm``; ``timm.create_model`` itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from _surgery_helpers import randomize_batchnorm
from torch import nn

import deeprebirth
from deeprebirth.compat.timm import import_timm
from deeprebirth.models import available_models, build_model, get_recipe, rebuild

pytestmark = pytest.mark.filterwarnings("ignore:torchvision's C\\+\\+ operators")

EXACT_RULES = ["fold_bn", "fuse_conv_pool", "merge_branches"]
BATCHNORMS = nn.modules.batchnorm._BatchNorm

# name -> (input size, minimum applied sites of fuse_conv_pool / merge_branches)
MODELS = {
    "resnet18": (64, {"fuse_conv_pool": 1}),
    "efficientnet_b0": (64, {}),
    "mobilenetv3_large_100": (64, {}),
    "regnety_002": (64, {}),
    "densenet121": (64, {"fuse_conv_pool": 4}),  # pre-activation: half its BatchNorms stay
    "inception_v3": (75, {"fuse_conv_pool": 2, "merge_branches": 10}),
}


def batchnorms_reading_a_conv(model: nn.Module, x: torch.Tensor) -> tuple[set[str], set[str]]:
    """``(BatchNorms whose input is a conv/linear output, all BatchNorms called)``, by module
    name, from one eager forward with hooks."""
    producers: dict[int, str] = {}
    kept: list[torch.Tensor] = []  # keeps outputs alive, so that their ids stay unique
    after_conv: set[str] = set()
    called: set[str] = set()
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):

            def record(module, inputs, output, name=name):
                kept.append(output)
                producers[id(output)] = name

            handles.append(module.register_forward_hook(record))
        elif isinstance(module, BATCHNORMS):

            def check(module, inputs, name=name):
                called.add(name)
                if id(inputs[0]) in producers:
                    after_conv.add(name)

            handles.append(module.register_forward_pre_hook(check))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return after_conv, called


@pytest.mark.parametrize("name", list(MODELS))
def test_exact_rules_keep_timm_outputs(name: str) -> None:
    size, minimum = MODELS[name]
    model = randomize_batchnorm(build_model(f"timm:{name}", num_classes=10))
    x = torch.randn(1, 3, size, size)
    slim_model, report = deeprebirth.slim(model, EXACT_RULES, x)

    check = deeprebirth.verify(model, slim_model, x)
    assert check.max_rel <= 1e-4, f"{name}: {check}"
    assert report.exact and report.traced
    counts = {rule: sum(s.rule == rule for s in report.applied) for rule in EXACT_RULES}
    for rule, count in minimum.items():
        assert counts[rule] >= count, f"{name}: {counts}"

    # every BatchNorm reading a conv output is folded; every other one is a skipped site
    after_conv, called = batchnorms_reading_a_conv(model, x)
    folds = [s for s in report.sites if s.rule == "fold_bn"]
    folded = {s.modules[1] for s in folds if s.applies}
    skipped = {s.modules[-1]: s.reason for s in folds if not s.applies}
    assert folded and folded == after_conv, f"{name}: {sorted(folded ^ after_conv)[:4]}"
    all_bns = {n for n, m in model.named_modules() if isinstance(m, BATCHNORMS)}
    assert len(folds) == len(all_bns) and folded | set(skipped) == all_bns == called
    assert all("input is not a conv/linear output" in reason for reason in skipped.values()), (
        f"{name}: {set(skipped.values())}"
    )
    left = sum(isinstance(m, BATCHNORMS) for m in slim_model.modules())
    assert left == len(skipped), f"{name}: {left} BatchNorms left, {len(skipped)} skipped"


@pytest.mark.parametrize("variant", ["silu_dropout", "no_act", "sync_relu"])
def test_fold_bn_keeps_the_act_and_drop_of_norm_act_layers(variant: str) -> None:
    layers = import_timm().layers
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=variant == "no_act")
    if variant == "silu_dropout":
        norm = layers.BatchNormAct2d(6, act_layer=nn.SiLU, drop_layer=nn.Dropout)
        act = F.silu
    elif variant == "no_act":
        norm, act = layers.BatchNormAct2d(6, apply_act=False), (lambda y: y)
    else:
        norm, act = layers.BatchNormAct2d(6, act_layer=nn.ReLU), F.relu
    model = randomize_batchnorm(nn.Sequential(conv, norm, nn.Flatten())).eval()
    if variant == "sync_relu":
        model = layers.convert_sync_batchnorm(model).eval()
        assert type(model[1]).__name__ == "SyncBatchNormAct"
    bn = model[1]
    slim_model, report = deeprebirth.slim(model, "fold_bn", torch.zeros(1, 4, 7, 7))

    x = torch.randn(2, 4, 7, 7)
    y = F.batch_norm(conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)  # fmt: skip
    torch.testing.assert_close(slim_model(x), act(y).flatten(1), rtol=1e-5, atol=1e-5)
    assert [s.modules for s in report.applied] == [("0", "1")]
    kept = {
        "silu_dropout": (nn.Sequential, [nn.Dropout, nn.SiLU]),
        "no_act": (nn.Identity, []),
        "sync_relu": (nn.ReLU, []),
    }[variant]
    assert type(slim_model[1]) is kept[0]
    assert [type(m) for m in slim_model[1].children()] == kept[1]


def test_streamline_reads_a_norm_act_relu_as_batchnorm_then_relu() -> None:
    layers = import_timm().layers
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    norm_act = nn.Sequential(conv, layers.BatchNormAct2d(8), nn.MaxPool2d(2))
    separate = nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
    randomize_batchnorm(norm_act)
    separate[1].load_state_dict(norm_act[1].state_dict())
    x = torch.randn(1, 3, 16, 16)
    results = []
    for model in (norm_act.eval(), separate.eval()):
        slim_model, report = deeprebirth.slim(model, "streamline", x, init="inherit")
        assert len(report.applied) == 1 and slim_model[0].stride == (2, 2)
        results.append(slim_model(x))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    assert isinstance(slim_model[2], nn.ReLU)  # the separate ReLU stays, as norm-act's act does
    assert type(deeprebirth.slim(norm_act, "streamline", x)[0][1]) is nn.ReLU


def test_fold_bn_lists_every_batchnorm_it_leaves() -> None:
    class PreActivation(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.pool = nn.MaxPool2d(2)
            self.bn_after_pool = nn.BatchNorm2d(4)
            self.unused = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn_after_pool(self.pool(self.conv(x)))

    report = deeprebirth.plan(PreActivation().eval(), (1, 3, 10, 10), rules="fold_bn")
    reasons = {s.modules: s.reason for s in report.skipped}
    assert not report.applied and set(reasons) == {("bn_after_pool",), ("unused",)}
    assert "reads pool (MaxPool2d)" in reasons[("bn_after_pool",)]
    assert "does not call it" in reasons[("unused",)]


def test_build_model_timm_matches_timm_and_rebuilds(tmp_path) -> None:
    timm = import_timm()
    torch.manual_seed(5)
    model = build_model("timm:resnet18", num_classes=7, in_channels=1)
    torch.manual_seed(5)
    reference = timm.create_model("resnet18", num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    assert not model.training and model(x).shape == (2, 7)
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)

    assert get_recipe(model)["source"] == {
        "name": "timm:resnet18",
        "num_classes": 7,
        "kwargs": {"in_channels": 1},
    }
    rebuilt = rebuild(get_recipe(model))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes

    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    loaded = build_model("timm:resnet18", num_classes=7, weights=str(path), in_chans=1)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert "timm:mobilenetv3_large_100" in available_models()


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("timm:resnet_nope", {}, "unknown timm model 'resnet_nope'.*timm.list_models"),
        ("timm:", {}, "unknown timm model ''"),
        ("timm:resnet18", {"weights": "IMAGENET1K_V1"}, "local .pth state_dict path"),
        ("timm:resnet18", {"pretrained": True}, "no pretrained= argument"),
        ("timm:resnet18", {"in_channels": 1, "in_chans": 1}, "in_channels= or timm's in_chans="),
    ],
)
def test_build_model_timm_rejects_bad_arguments(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, **kwargs)


def test_missing_timm_names_the_package_and_the_install(monkeypatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.delitem(sys.modules, "timm")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "timm" else find_spec(n, *a)
    )
    with pytest.raises(ImportError, match=r"'timm'.*deeprebirth\[timm\].*requirements-timm.txt"):
        build_model("timm:resnet18")


def test_import_timm_in_a_fresh_process() -> None:
    code = textwrap.dedent(
        """
        import sys, warnings
        warnings.simplefilter("ignore", RuntimeWarning)
        import deeprebirth, deeprebirth.models, deeprebirth.surgery
        assert "timm" not in sys.modules, "deeprebirth imported timm"
        from deeprebirth.compat.timm import import_timm
        timm = import_timm()
        print(timm.__version__, type(timm.create_model("regnety_002", num_classes=3)).__name__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1.0.31", "RegNet"]
