"""Eager inference forwards recorded once and run as one C++ call (``deeprebirth.nn.op_plan``):
outputs equal the eager forward's bit for bit (``use_plans = False`` is the reference), every
change the eager forward would see is seen (weights written in place, through ``.data`` or
``load_state_dict``, replaced layers, hooks, training mode, gradients, Python modes), and forwards
a replay could not repeat faithfully run eagerly with the reason reported."""

from __future__ import annotations

import copy
import doctest
import re
import warnings

import pytest
import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

import deeprebirth
from deeprebirth.compat.torchvision import import_torchvision
from deeprebirth.nn import PackedConv2d, PlannedGraphModule, PlanRefused, record_op_plan
from deeprebirth.nn.op_plan import _PLANS, STALE
from deeprebirth.surgery import flatten_for_inference

pytestmark = [
    pytest.mark.filterwarnings("ignore:torchvision's C\\+\\+ operators"),
    pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not in this torch"),
]


def _deployed_googlenet(freeze: bool = True) -> nn.Module:
    """GoogLeNet-Slim (width 0.125, 1 channel) after the exact rules, pack_conv and flatten."""
    torch.manual_seed(0)
    teacher = deeprebirth.models.bvlc_googlenet(num_classes=10, width=0.125, in_channels=1)
    x = torch.randn(2, 1, 64, 64)
    student, _ = deeprebirth.slim(teacher.eval(), ["streamline", "branch_slim"], x)
    packed, _ = deeprebirth.slim(student.eval(), ["fold_bn", "merge_branches", "pack_conv"], x)
    flat = flatten_for_inference(packed.eval())
    if freeze:
        deeprebirth.nn.freeze_packed_weights(flat)
    return flat


def _deployed_resnet18() -> nn.Module:
    """torchvision's resnet18 (residual adds fused into oneDNN calls) deployed the same way."""
    torch.manual_seed(0)
    model = import_torchvision().models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    packed, _ = deeprebirth.slim(model, ["fold_bn", "pack_conv"], x)
    flat = flatten_for_inference(packed.eval())
    deeprebirth.nn.freeze_packed_weights(flat)
    return flat


def _eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.use_plans = False
    try:
        return model(x)
    finally:
        del model.use_plans


def _runs(model: nn.Module) -> int:
    plans = _PLANS.get(model)
    return plans.runs if plans else 0


def _planned(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` from its plan: the third call of the shape records nothing new."""
    for _ in range(2):
        model(x)
    runs = _runs(model)
    y = model(x)
    assert _runs(model) == runs + 1, model.plan_report()
    return y


@pytest.mark.parametrize("build", [_deployed_googlenet, _deployed_resnet18])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_plan_equals_the_eager_forward_bitwise(build, mode) -> None:
    model = build()
    assert isinstance(model, PlannedGraphModule)
    channels = 1 if build is _deployed_googlenet else 3
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        for batch in (1, 3):
            x = torch.randn(batch, channels, 64, 64)
            assert torch.equal(_planned(model, x), _eager(model, x))
        x = torch.randn(2, channels, 64, 64).contiguous(memory_format=torch.channels_last)
        assert torch.equal(_planned(model, x), _eager(model, x))
    report = model.plan_report()
    assert len(report) == 3 and all(r["steps"] > 10 and not r["why"] for r in report), report


def test_non_finite_inputs_take_the_eager_kernels(monkeypatch) -> None:
    """small_conv2d runs oneDNN, not Winograd, on a non-finite input: the plan, which recorded
    Winograd (chosen wherever it applies here), hands such a call to the eager forward and keeps
    its plan."""
    monkeypatch.setenv("DEEPREBIRTH_PACKED_WINOGRAD", "1")
    torch.manual_seed(0)
    model = flatten_for_inference(nn.Sequential(PackedConv2d(16, 32, 3, padding=1)).eval())
    deeprebirth.nn.freeze_packed_weights(model)
    x = torch.randn(1, 16, 32, 32)
    with torch.no_grad():
        _planned(model, x)
        x[0, 3, 10, 10] = float("nan")
        runs = _runs(model)
        y = model(x)
        assert _runs(model) == runs
        torch.testing.assert_close(y, _eager(model, x), rtol=0, atol=0, equal_nan=True)
        assert y.isnan().sum() == 9 * 32  # oneDNN: the 3x3 neighbourhood, not 2x2 blocks' 16
        x[0, 3, 10, 10] = 0.0
        assert torch.equal(model(x), _eager(model, x)) and _runs(model) == runs + 1


def test_examples_in_docstrings() -> None:
    from deeprebirth.nn import op_plan

    assert doctest.testmod(op_plan).failed == 0


def test_weight_updates_are_seen() -> None:
    """Frozen weights (version guards in C++): in-place writes, ``.data`` replaced and
    ``load_state_dict``; unfrozen weights (compared byte for byte): writes through ``.data``,
    which move no version counter."""
    x = torch.randn(2, 1, 64, 64)
    model = _deployed_googlenet()
    reference = copy.deepcopy(model)  # its layers may time other kernels: equal within rounding
    packed = [m for m in model.modules() if isinstance(m, PackedConv2d)]

    def same_as_reference(y: torch.Tensor) -> None:
        assert torch.equal(y, _eager(model, x))
        expected = _eager(reference, x)
        torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())

    with torch.no_grad():
        _planned(model, x)
        packed[3].weight.mul_(1.5)
        reference.get_submodule(_name(model, packed[3])).weight.mul_(1.5)
        same_as_reference(model(x))
        for root in (model, reference):  # new memory: the version counter stays
            layer = root.get_submodule(_name(model, packed[5]))
            layer.weight.data = layer.weight.data * -1.0
        same_as_reference(model(x))
        state = {k: v * 0.5 for k, v in reference.state_dict().items()}
        model.load_state_dict(state)
        reference.load_state_dict(state)
        same_as_reference(_planned(model, x))

    unfrozen = _deployed_googlenet(freeze=False)
    layer = next(m for m in unfrozen.modules() if isinstance(m, PackedConv2d))
    with torch.no_grad():
        before = _planned(unfrozen, x)
        layer.weight.data.mul_(-2.0)  # no version counter moves
        after = unfrozen(x)
        assert not torch.equal(after, before)
        assert torch.equal(after, _eager(unfrozen, x))


def _name(root: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in root.named_modules() if m is module)


def test_replaced_layers_hooks_and_training_mode_are_seen() -> None:
    x = torch.randn(1, 1, 64, 64)
    model = _deployed_googlenet()
    with torch.no_grad():
        _planned(model, x)
        model.classifier = nn.Linear(model.classifier.in_features, 10).eval()
        assert torch.equal(model(x), _eager(model, x))
        _planned(model, x)

        seen = []
        handle = model.concat_3.register_forward_hook(lambda m, args, out: seen.append(out.shape))
        runs = _runs(model)
        assert torch.equal(model(x), _eager(model, x))
        assert seen and _runs(model) == runs  # the hook ran: no plan
        handle.remove()
        _planned(model, x)

        model.train()
        runs = _runs(model)
        model(x)
        assert _runs(model) == runs
        model.eval()
        assert torch.equal(_planned(model, x), _eager(model, x))


def test_gradients_modes_and_opt_out_run_eagerly() -> None:
    """With autograd the output has a graph; under FlopCounterMode the count is the eager one;
    ``use_plans = False`` records nothing."""
    x = torch.randn(1, 1, 64, 64)
    model = _deployed_googlenet()
    with torch.no_grad():
        _planned(model, x)
    runs = _runs(model)
    y = model(x.requires_grad_())
    assert y.requires_grad and _runs(model) == runs
    x = x.detach()
    with torch.no_grad(), FlopCounterMode(display=False) as planned_count:
        model(x)
    with torch.no_grad(), FlopCounterMode(display=False) as eager_count:
        _eager(model, x)
    assert planned_count.get_total_flops() == eager_count.get_total_flops() > 0
    assert _runs(model) == runs
    fresh = _deployed_googlenet()
    fresh.use_plans = False
    with torch.no_grad():
        for _ in range(3):
            fresh(x)
    assert fresh.plan_report() == []


def test_copies_and_scripts_keep_working() -> None:
    x = torch.randn(1, 1, 64, 64)
    model = _deployed_googlenet()
    with torch.no_grad():
        expected = _planned(model, x)
        copied = copy.deepcopy(model)
        assert isinstance(copied, PlannedGraphModule) and copied.plan_report() == []
        planned = _planned(copied, x)  # its layers time their kernels anew: equal within rounding
        assert torch.equal(planned, _eager(copied, x))
        torch.testing.assert_close(planned, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-5)
    model.reset_plans()
    assert model.plan_report() == []


class _ReadsAValue(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum().item() > 0 else x  # Python branches on the data


class _Counts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)  # a write into a buffer: the replay would not repeat it per call
        return x + self.calls


class _Shaped(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[x > 0]  # an output shape the data decides


@pytest.mark.parametrize(
    ("module", "why"),
    [
        (_ReadsAValue(), "into Python|branched on"),
        (_Counts(), "writes into a weight or buffer"),
        (_Shaped(), "output shape the input's values decide"),
    ],
)
def test_forwards_a_replay_cannot_repeat_run_eagerly(module, why) -> None:
    root = nn.Module()
    root.inner = module
    graph = fx.Graph()
    graph.output(graph.call_module("inner", (graph.placeholder("x"),)))
    model = PlannedGraphModule(root, graph).eval()
    x = torch.randn(2, 3)
    with torch.no_grad():
        for _ in range(3):
            y = model(x)
    (entry,) = model.plan_report()
    assert entry["steps"] == 0 and re.search(why, entry["why"]), entry
    if not isinstance(module, _Counts):
        with torch.no_grad():
            assert torch.equal(y, module(x))
    with pytest.raises(PlanRefused):
        with torch.no_grad():
            record_op_plan(module, [x])


def test_new_buffers_and_random_draws_are_made_on_each_run() -> None:
    """Calls that read no tensor (a new buffer, random numbers) and random draws from weights
    run again in the plan: its draws follow the generator as the eager forward's do."""
    weight = torch.rand(3)

    def forward(x: torch.Tensor) -> torch.Tensor:
        buffer = torch.zeros(x.shape)
        buffer.copy_(x)
        return buffer + torch.rand(x.shape) + torch.bernoulli(weight)

    x = torch.randn(2, 3)
    _, plan = record_op_plan(forward, [x])
    first = plan([x])
    assert plan([x]) is not first and not torch.equal(plan([x]), first)
    torch.manual_seed(7)
    replayed = plan([x])
    torch.manual_seed(7)
    assert torch.equal(replayed, forward(x))


def test_record_op_plan_outputs_structures_lists_and_constants() -> None:
    """Tuples and dicts of outputs, ops that return lists (split), the input itself and a
    constant tensor come back in place; a plan whose guarded weight changed refuses to run."""
    weight = torch.randn(4, 6)

    def forward(x: torch.Tensor):
        parts = torch.split(x @ weight, 2, dim=1)
        scaled = parts[0] * 0.5 + 1  # scalar operands reach the dispatcher as numbers
        return {"sum": scaled + parts[1], "both": (parts[1].relu(), x), "w": weight}

    x = torch.randn(3, 4)
    with torch.no_grad():
        _, plan = record_op_plan(forward, [x])
        x2 = torch.randn(3, 4)
        out, expected = plan([x2]), forward(x2)
    assert torch.equal(out["sum"], expected["sum"])
    assert torch.equal(out["both"][0], expected["both"][0])
    assert out["both"][1] is x2 and out["w"] is weight
    assert plan.steps >= 4
    with torch.no_grad():
        weight.add_(1.0)  # the plan read it as an argument: the change is seen
        torch.testing.assert_close(plan([x2])["sum"], forward(x2)["sum"])
    constant = torch.randn(4)

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return x * constant.exp()  # exp() of a constant: a constant of the plan, guarded

    with torch.no_grad():
        _, plan = record_op_plan(scaled, [x])
        assert torch.equal(plan([x2]), scaled(x2))
        constant.add_(1.0)
    assert plan([x2]) is STALE


def test_op_plan_rejects_bad_specs() -> None:
    plan = deeprebirth.ops.load_extension().OpPlan(1)
    with pytest.raises(ValueError, match="no operator aten::no_such_op"):
        plan.add_step("aten::no_such_op", "", [])
    with pytest.raises(ValueError, match="takes 3 arguments, but got 1"):
        plan.add_step("aten::add", "Tensor", [("s", 0, -1)])
    with pytest.raises(ValueError, match="slot 5 is not filled"):
        plan.add_step("aten::relu", "", [("s", 5, -1)])
    with torch.inference_mode():
        made_here = torch.zeros(2)
    with pytest.raises(ValueError, match="inference tensor"):
        plan.add_guard(made_here)
