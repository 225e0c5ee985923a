"""Surgery API behaviour: bad inputs, skipped sites with reasons, plan output, user rules, CLI."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from _surgery_helpers import randomize_batchnorm
from torch import nn

import deeprebirth
import deeprebirth.surgery.rules
from deeprebirth.surgery import Rule, Site, known_rules, new_parameters
from deeprebirth.surgery.rules.tucker import tucker2_factors


def conv_bn_relu_pool() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
    )


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = conv_bn_relu_pool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if y.sum() > 0:
            return y
        return -y


def test_nothing_to_slim_gives_an_empty_plan() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Softmax(1)).eval()
    plan = deeprebirth.plan(model, torch.zeros(1, 3, 2, 2), rules=known_rules())
    assert len(plan) == 0 and plan.exact
    slim_model, report = deeprebirth.slim(model, plan)
    assert len(report.applied) == 0
    x = torch.randn(2, 3, 2, 2)
    assert deeprebirth.verify(model, slim_model, x).max_abs == 0


def test_unknown_rule_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown rule 'fold_everything'.*fold_bn.*streamline"):
        deeprebirth.plan(conv_bn_relu_pool().eval(), (1, 3, 8, 8), rules=["fold_everything"])


def test_training_mode_is_refused_unless_allowed() -> None:
    model = conv_bn_relu_pool().train()
    with pytest.raises(ValueError, match="training mode.*allow_train_mode=True"):
        deeprebirth.slim(model, "fold_bn", (1, 3, 8, 8))
    slim_model, report = deeprebirth.slim(model, "fold_bn", (1, 3, 8, 8), allow_train_mode=True)
    assert len(report.applied) == 1 and slim_model.training
    assert model[1].num_batches_tracked.item() == 0  # planning did not run BN in training mode


class _SharedRelu(nn.Module):
    """conv -> relu -> pool, then the same ReLU module again on a second branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.pool = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)
        self.other = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.relu(self.conv(x)))
        return self.relu(self.other(y) - 1.0)


def test_fuse_conv_pool_drops_a_relu_module_called_only_in_the_chain() -> None:
    """ConvPool2d applies the chain's ReLU: a ReLU module called only there becomes Identity (one
    call less), one the model calls elsewhere stays; both slim models compute the original."""
    x = torch.randn(2, 3, 10, 10)
    chain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    shared = _SharedRelu().eval()
    for model, relu_name, dropped in ((chain, "1", True), (shared, "relu", False)):
        slim_model, report = deeprebirth.slim(model, "fuse_conv_pool", x)
        assert [s.rule for s in report.applied] == ["fuse_conv_pool"]
        relu = slim_model.get_submodule(relu_name)
        assert isinstance(relu, nn.Identity if dropped else nn.ReLU), type(model).__name__
        with torch.no_grad():
            torch.testing.assert_close(slim_model(x), model(x), rtol=1e-5, atol=1e-6)


def test_untraceable_model_falls_back_with_a_warning() -> None:
    model = randomize_batchnorm(Untraceable()).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="torch.fx could not trace Untraceable"):
        slim_model, report = deeprebirth.slim(model, ["fold_bn", "fuse_conv_pool"], x)
    assert not report.traced and "fell back" in report.notes[0]
    assert [s.rule for s in report.applied] == ["fold_bn", "fuse_conv_pool"]
    assert deeprebirth.verify(model, slim_model, x).max_rel <= 1e-5


@pytest.mark.parametrize(
    ("model", "rule", "reason"),
    [
        (nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, padding=1, count_include_pad=False)),
         "fuse_conv_pool", "count_include_pad"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.MaxPool2d(2)),
         "fuse_conv_pool", "padding_mode"),
        (nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.MaxPool2d(2)), "fuse_conv_pool", "run fold_bn first"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, dilation=2), nn.ReLU(), nn.MaxPool2d(2)), "streamline", "dilation"),
    ],
)  # fmt: skip
def test_sites_that_do_not_fit_are_skipped_with_a_reason(
    model: nn.Module, rule: str, reason: str
) -> None:
    model.eval()
    x = torch.randn(1, 4, 12, 12)
    slim_model, report = deeprebirth.slim(model, rule, x)
    assert len(report.skipped) == 1 and not report.applied
    assert reason in report.skipped[0].reason
    assert deeprebirth.verify(model, slim_model, x).max_abs == 0


class TwoReaders(nn.Module):
    """The pool's input is also read by a second layer; parallel convs with groups/dilation."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.side = nn.Conv2d(4, 4, 1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.plain = nn.Conv2d(4, 4, 1)
        self.strided = nn.Conv2d(4, 4, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.pool(y) + self.pool(self.side(y))[:, :, :, :]
        w = torch.cat([z, self.grouped(z), self.dilated(z), self.plain(z)], 1)
        return w[:, :, ::2, ::2] + self.strided(z).repeat(1, 4, 1, 1)


def test_shared_inputs_groups_and_dilation_are_skipped() -> None:
    model = TwoReaders().eval()
    x = torch.randn(1, 4, 8, 8)
    slim_model, report = deeprebirth.slim(model, ["fuse_conv_pool", "merge_branches"], x)
    reasons = " | ".join(s.reason for s in report.skipped)
    assert "pool is called 2 times" in reasons or "also read by" in reasons
    assert "groups=2" in reasons and "dilation=(2, 2)" in reasons
    assert "mismatched shapes" in reasons
    assert not report.applied
    assert deeprebirth.verify(model, slim_model, x).max_abs == 0


def test_plan_table_and_dict() -> None:
    model = deeprebirth.models.bvlc_googlenet(num_classes=10, width=0.25).eval()
    plan = deeprebirth.plan(model, torch.zeros(1, 3, 64, 64), rules="fuse_conv_pool,merge_branches")
    text = str(plan)
    assert "fuse_conv_pool" in text and "conv1.conv + conv1.pool" in text and "skip" in text
    assert "conv2.norm (LocalResponseNorm) lies between conv and pool" in text
    record = json.loads(json.dumps(plan.to_dict()))
    assert record["rules"] == ["fuse_conv_pool", "merge_branches"] and record["traced"]
    assert record["input_shape"] == [1, 3, 64, 64]
    first = record["sites"][0]
    assert first["modules"] == ["conv1.conv", "conv1.pool"] and first["exact"] and first["applies"]
    assert first["macs_before"] == first["macs_after"] > 0
    assert first["act_bytes_after"] < first["act_bytes_before"]
    assert record["before"]["params"] == sum(p.numel() for p in model.parameters())
    assert "| rule |" in plan.to_markdown()


def test_register_rule_with_a_user_rule() -> None:
    @deeprebirth.register_rule
    class DropDropout(Rule):
        name, exact = "test_drop_dropout", True

        def find(self, ctx):
            return [
                self.site((n,), "no-op in eval")
                for n, m in ctx.model.named_modules()
                if isinstance(m, nn.Dropout)
            ]

        def replacements(self, model, site, options):
            return {site.modules[0]: nn.Identity()}

    assert "test_drop_dropout" in known_rules()
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    slim_model, report = deeprebirth.slim(model, ["test_drop_dropout"], torch.zeros(1, 4))
    assert isinstance(slim_model[1], nn.Identity) and isinstance(model[1], nn.Dropout)
    assert [s.to_dict()["modules"] for s in report.applied] == [["1"]]
    with pytest.raises(TypeError, match="find"):
        deeprebirth.register_rule(type("NotARule", (), {"name": "x", "exact": True}))
    assert isinstance(report.applied[0], Site)


def test_tucker_decomposition() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 48, 3, padding=1)
    from deeprebirth.surgery.registry import SlimOptions

    u_out, core, u_in = tucker2_factors(conv.weight, SlimOptions(tucker_ratio=1.0))
    rebuilt = torch.einsum("or,rskl,is->oikl", u_out, core, u_in)
    torch.testing.assert_close(rebuilt.float(), conv.weight.detach(), rtol=1e-5, atol=1e-6)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    x = torch.randn(1, 32, 10, 10)
    slim_model, report = deeprebirth.slim(model, "tucker", x, tucker_ratio=0.25)
    assert report.applied[0].details["ranks"] == [8, 12]
    assert [m.kernel_size for m in slim_model[0]] == [(1, 1), (3, 3), (1, 1)]
    assert slim_model(x).shape == model(x).shape
    assert report.after.macs < report.before.macs
    assert set(new_parameters(slim_model)) == {"0.0.weight", "0.1.weight", "0.2.weight", "0.2.bias"}
    with torch.no_grad():  # a weight of multilinear rank (4, 4) plus noise: energy finds the ranks
        conv.weight.copy_(torch.einsum("or,rskl,is->oikl", torch.randn(48, 4), torch.randn(4, 4, 3, 3),
                                       torch.randn(32, 4)) + 1e-4 * torch.randn_like(conv.weight))  # fmt: skip
    _, energy = deeprebirth.slim(model, "tucker", x, tucker_energy=0.999)
    assert energy.applied[0].details["ranks"] == [4, 4]


def test_resnet_stem_streamline_keeps_output_size() -> None:
    from deeprebirth.models import build_model

    model = build_model("torchvision:resnet18", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    slim_model, report = deeprebirth.slim(model, ["streamline", "fold_bn"], x)
    stems = [s for s in report.applied if s.rule == "streamline"]
    assert [s.modules for s in stems] == [("conv1", "bn1", "maxpool")]
    assert slim_model.conv1.stride == (4, 4) and isinstance(slim_model.maxpool, nn.Identity)
    assert slim_model(x).shape == model(x).shape


def test_cli_round_trip(tmp_path) -> None:
    from deeprebirth.cli import main
    from deeprebirth.io import load_model
    from deeprebirth.models import build_model

    out, report = tmp_path / "slim.pt", tmp_path / "slim.md"
    args = ["slim", "--model", "torchvision:squeezenet1_1", "--num-classes", "10", "--rules",
            "fold_bn,fuse_conv_pool,merge_branches", "--out", str(out), "--report", str(report),
            "--input-size", "64"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(args) == 0
    model, metadata = load_model(out)  # includes GraphModules written by merge_branches
    assert metadata["source_model"] == "torchvision:squeezenet1_1"
    assert metadata["rules"] == ["fold_bn", "fuse_conv_pool", "merge_branches"]
    assert (metadata["input_size"], metadata["in_channels"]) == ([64, 64], 3)
    applied = [s["rule"] for s in metadata["plan"]["sites"] if s["applies"]]
    assert (
        applied.count("fold_bn"),
        applied.count("fuse_conv_pool"),
        applied.count("merge_branches"),
    ) == (0, 1, 8)  # no BatchNorm; every Fire module's expand layers merged
    torch.manual_seed(0)  # the command's --seed default: the same random weights
    original = build_model("torchvision:squeezenet1_1", num_classes=10)
    assert deeprebirth.verify(original, model, torch.randn(2, 3, 64, 64)).max_rel <= 1e-4
    text = report.read_text()
    assert "verify (exact plan)" in text and "merge_branches" in text


def test_slim_with_a_plan_of_another_model_warns() -> None:
    planned = deeprebirth.plan(conv_bn_relu_pool().eval(), (1, 3, 8, 8), rules="fold_bn")
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    with pytest.warns(UserWarning, match="differs from the planned one"):
        _, report = deeprebirth.slim(other, planned)
    assert report.sites == [] and len(planned.applied) == 1


def test_build_model_loads_local_weights_and_rejects_unknown_names(tmp_path) -> None:
    from deeprebirth.models import build_model

    source = build_model("bvlc_googlenet", num_classes=5, width=0.25)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = build_model("bvlc_googlenet", num_classes=5, width=0.25, weights=str(path))
    assert all(
        torch.equal(a, b)
        for a, b in zip(source.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert not loaded.training
    with pytest.raises(ValueError, match="unknown model 'alexnet'.*torchvision:<name>"):
        build_model("alexnet")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("bvlc_googlenet", weights=str(tmp_path / "missing.pth"))


def test_flatten_for_inference_inlines_containers_and_drops_no_ops() -> None:
    """Same outputs as the packed student; no Identity/Dropout calls left; scriptable; refuses
    training mode and names untraceable models."""
    from deeprebirth.surgery import flatten_for_inference

    teacher = deeprebirth.models.bvlc_googlenet(num_classes=10, width=0.125, in_channels=1)
    x = torch.randn(2, 1, 32, 32)
    student, _ = deeprebirth.slim(teacher.eval(), ["streamline", "branch_slim"], x)
    packed, _ = deeprebirth.slim(student.eval(), ["pack_conv"], x)
    flat = flatten_for_inference(packed.eval())
    assert deeprebirth.verify(packed, flat, x).max_abs == 0
    called = [flat.get_submodule(n.target) for n in flat.graph.nodes if n.op == "call_module"]
    assert called and not any(isinstance(m, (nn.Identity, nn.Dropout)) for m in called)
    assert not any(type(m).__name__ == "Inception" for m in called)  # containers inlined
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(flat)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), packed(x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="eval-mode"):
        flatten_for_inference(packed.train())

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow

    with pytest.raises(RuntimeError, match="cannot trace Branchy"):
        flatten_for_inference(Branchy().eval())


def test_flatten_writes_concatenated_packed_convolutions_in_place() -> None:
    """Each Inception module's cat of PackedConv2d outputs becomes one PackedConvConcat call:
    equal outputs in eager mode and frozen TorchScript (whose graph calls small_conv2d_cat with
    the packed weights folded and no cat), and a portable copy without deeprebirth operators."""
    from deeprebirth.export import make_portable, uses_deeprebirth_ops
    from deeprebirth.nn import PackedConvConcat
    from deeprebirth.surgery import flatten_for_inference

    teacher = deeprebirth.models.bvlc_googlenet(num_classes=10, width=0.125, in_channels=1)
    x = torch.randn(1, 1, 64, 64)
    student, _ = deeprebirth.slim(teacher.eval(), ["streamline", "branch_slim"], x)
    packed, _ = deeprebirth.slim(student.eval(), ["pack_conv"], x)
    flat = flatten_for_inference(packed.eval())
    called = [flat.get_submodule(n.target) for n in flat.graph.nodes if n.op == "call_module"]
    assert sum(isinstance(m, PackedConvConcat) for m in called) == 9  # one per Inception module
    assert not any(n.target is torch.cat for n in flat.graph.nodes)
    with torch.no_grad():
        expected = student(x)
        torch.testing.assert_close(flat(x), expected, rtol=1e-4, atol=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(torch.jit.script(flat))
        kinds = [node.kind() for node in frozen.graph.nodes()]
        assert kinds.count("deeprebirth::small_conv2d_cat") == 9
        assert "deeprebirth::direct_conv_pack" not in kinds and "aten::cat" not in kinds
        torch.testing.assert_close(frozen(x), expected, rtol=1e-4, atol=1e-5)
        portable = make_portable(flat)
        assert uses_deeprebirth_ops(flat) and not uses_deeprebirth_ops(portable)
        torch.testing.assert_close(portable(x), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="layer 1 is a Conv2d, not a PackedConv2d"):
        PackedConvConcat([flat.concat.convs[0], nn.Conv2d(3, 4, 1)])


def test_every_rule_file_registers_its_rule_once():
    """The rule list is the rules/ folder: each file registers the rule named after it."""
    import subprocess
    import sys

    from deeprebirth.surgery.rules import BUILTIN_RULE_MODULES

    files = sorted(
        p.stem
        for p in Path(deeprebirth.surgery.rules.__file__).parent.glob("*.py")
        if not p.stem.startswith("_")
    )
    assert list(BUILTIN_RULE_MODULES) == files
    code = "from deeprebirth.surgery.registry import known_rules; print(','.join(known_rules()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().split(",") == files
