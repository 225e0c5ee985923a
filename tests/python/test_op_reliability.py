"""Operator reliability (issue 22): bad arguments raise a RuntimeError / ValueError naming the
argument instead of killing the process, NaN and infinities reach conv_pool's output as in ATen's
unfused sequence on every route, conv_pool's second derivatives are ATen's, and PackedConv2d
follows every kind of weight update with bounded, thread-safe caches.

Calls that used to die of SIGFPE run in child processes, so a crash fails its test instead of
ending the run."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from aten_references import unfused_conv_pool as unfused
from isa_helpers import run_with_cpu_isa
from torch import nn

import deeprebirth.ops  # noqa: F401  (loads the operators)
from deeprebirth.nn import PackedConv2d, freeze_packed_weights
from deeprebirth.surgery.accounting import conv2d_macs

conv_pool_op = torch.ops.deeprebirth.conv_pool
needs_mkldnn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="oneDNN (mkldnn) is not in this torch build"
)

# ---------------------------------------------------------------------------------------------
# Bad arguments: an error naming the argument, never SIGFPE

# Names every case's code can use (run in the child process, and in this one for ATen's side).
CASE_PRELUDE = """
import torch
import torch.nn.functional as F
from deeprebirth.ops import direct_conv, direct_conv_pack, small_conv2d, small_conv2d_cat
conv_pool = torch.ops.deeprebirth.conv_pool
pool_args = ([1, 1], [0, 0], [1, 1], 1, "max", [2, 2], [2, 2], [0, 0], False, True)
x, w = torch.randn(1, 3, 8, 8), torch.randn(8, 3, 3, 3)
w_flat = torch.randn(8, 3, 0, 3)  # a zero-height kernel
x_none, w_none = torch.randn(1, 0, 8, 8), torch.randn(8, 0, 3, 3)  # no input channels
x16 = torch.randn(1, 16, 8, 8)
"""

# name -> (our call, a pattern its error must match or None for "no error", ATen's equivalent
# call that raises, or None where ATen has no error to compare with)
BAD_CALLS = {
    "small_conv2d stride 0": (
        "small_conv2d(x, w, direct_conv_pack(w), stride=(0, 1))",
        r"\bstride\b",
        "F.conv2d(x, w, stride=(0, 1))",
    ),
    "small_conv2d_cat stride 0": (
        "small_conv2d_cat([x, x], [w, w], [direct_conv_pack(w)] * 2, [None, None], [1, (1, 0)],"
        " [1, 1])",
        r"branch 1.*\bstride\b",
        "F.conv2d(x, w, stride=(1, 0))",
    ),
    "direct_conv empty kernel": (
        "direct_conv(x, direct_conv_pack(w_flat), None, 8)",
        r"\bkernel\b.*\bpacked_w\b",
        "F.conv2d(x, w_flat)",
    ),
    "small_conv2d empty kernel": (
        "small_conv2d(x, w_flat, direct_conv_pack(w_flat))",
        r"\bkernel",
        "F.conv2d(x, w_flat)",
    ),
    "small_conv2d_cat empty kernel": (
        "small_conv2d_cat([x], [w_flat], [direct_conv_pack(w_flat)], [None], [1], [0])",
        r"\bkernel",
        "F.conv2d(x, w_flat)",
    ),
    "direct_conv no input channels": (
        "direct_conv(x_none, direct_conv_pack(w_none), None, 8)",
        r"\bx\b.*\bchannel",
        None,
    ),
    "small_conv2d no input channels is conv2d": (
        "assert small_conv2d(x_none, w_none, direct_conv_pack(w_none)).shape"
        " == F.conv2d(x_none, w_none).shape",
        None,
        None,
    ),
    "conv_pool empty kernel, direct route": (
        "conv_pool(x, w_flat, None, *pool_args)",
        r"\bkernel\b.*\bw\b",
        "F.conv2d(x, w_flat)",
    ),
    "conv_pool empty kernel, oneDNN route": (
        "conv_pool(x16, torch.randn(32, 16, 3, 0), None, *pool_args)",
        r"\bkernel",
        "F.conv2d(x16, torch.randn(32, 16, 3, 0))",
    ),
    "conv_pool no input channels": (
        "conv_pool(x_none, w_none, torch.randn(8), *pool_args)",
        r"\binput channel",
        None,
    ),
}

CHILD = """
import json, sys
exec(sys.argv[1])
for name, code in json.loads(sys.argv[2]):
    print(json.dumps({"case": name}), flush=True)
    try:
        exec(code)
        result = {"case": name, "raised": None}
    except Exception as error:
        result = {"case": name, "raised": type(error).__name__, "message": str(error)}
    print(json.dumps(result), flush=True)
"""


@pytest.fixture(scope="module")
def bad_call_outcomes() -> dict[str, dict]:
    """Each case's outcome in a child process: what it raised, or the exit code of a crash. A
    child that dies leaves the cases after the one that killed it to a new child."""
    outcomes: dict[str, dict] = {}
    pending = [(name, call) for name, (call, _, _) in BAD_CALLS.items()]
    while pending:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, CASE_PRELUDE, json.dumps(pending)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        started = None
        for line in done.stdout.splitlines():
            record = json.loads(line)
            if "raised" in record:
                outcomes[record["case"]] = record
                started = None
            else:
                started = record["case"]
        if started is not None:  # the child died in this case
            outcomes[started] = {"crashed": done.returncode, "stderr": done.stderr[-2000:]}
        elif done.returncode != 0:
            pytest.fail(f"the child process failed outside the cases: {done.stderr[-2000:]}")
        pending = [(name, call) for name, call in pending if name not in outcomes]
    return outcomes


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments_raise_naming_the_argument(case: str, bad_call_outcomes) -> None:
    """Stride 0, a zero-size kernel and zero input channels give a RuntimeError naming the
    argument (ATen raises for the same stride or kernel), not SIGFPE (exit code 136 / -8)."""
    _, pattern, aten_call = BAD_CALLS[case]
    outcome = bad_call_outcomes[case]
    assert "crashed" not in outcome, f"the process died (exit code {outcome.get('crashed')})"
    if pattern is None:
        assert outcome["raised"] is None, outcome
        return
    assert outcome["raised"] == "RuntimeError", outcome
    assert re.search(pattern, outcome["message"]), outcome["message"]
    if aten_call is not None:
        names: dict = {}
        exec(CASE_PRELUDE, names)
        with pytest.raises(RuntimeError):
            eval(aten_call, names)


@pytest.mark.parametrize(
    "settings, name",
    [
        (dict(stride=0), "stride"),
        (dict(stride=(1, 0)), "stride"),
        (dict(padding=-1), "padding"),
        (dict(dilation=0), "dilation"),
        (dict(kernel_size=(0, 3)), "kernel_size"),
    ],
)
def test_packed_conv2d_rejects_settings_conv2d_rejects(settings: dict, name: str) -> None:
    """At construction, with a ValueError naming the setting (a ZeroDivisionError from the MAC
    count at the first call before); the same from a plain Conv2d through from_conv."""
    kwargs = {"in_channels": 3, "out_channels": 8, "kernel_size": 3, **settings}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nn.init warns about zero-element weights
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            PackedConv2d(**kwargs)
        conv = nn.Conv2d(**kwargs)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        PackedConv2d.from_conv(conv)


def test_mac_count_rejects_stride_0() -> None:
    with pytest.raises(ValueError, match=r"\bstride\b"):
        conv2d_macs(nn.Conv2d(3, 8, 3, stride=0), (1, 3, 8, 8))


# ---------------------------------------------------------------------------------------------
# NaN and infinities in conv_pool: exactly ATen's, on every route

# (x shape, w shape, stride, padding): a float32 layer each convolution of the CPU kernel takes.
ROUTES = {
    "direct": ((2, 3, 30, 30), (16, 3, 5, 5), 2, 2),
    "winograd": ((1, 16, 21, 22), (32, 16, 3, 3), 1, 1),
    "onednn": ((1, 8, 21, 22), (20, 8, 5, 5), 1, 2),
}
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _non_finite(t: torch.Tensor, seed: int, count: int) -> torch.Tensor:
    """t with `count` values set to NaN, inf or -inf at random places."""
    rng = random.Random(seed)
    t = t.clone(memory_format=torch.contiguous_format)
    flat = t.view(-1)
    for _ in range(count):
        flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
    return t


def check_non_finite_routes() -> None:
    """Every route, both pools, with and without ReLU, both layouts: NaN and infinities in the
    bias (added in the CPU epilogue) and in the input reach the output exactly as in the unfused
    sequence (same NaN, same signed infinities, the finite values to rounding)."""
    for route, (xs, ws, stride, padding) in ROUTES.items():
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.manual_seed(7)
            x = torch.randn(xs).contiguous(memory_format=layout)
            w = torch.randn(ws) / (ws[1] * ws[2] * ws[3]) ** 0.5
            b = torch.randn(ws[0])
            b[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
            for source in ("bias", "input"):
                xi = (
                    _non_finite(x, 1, 3).contiguous(memory_format=layout)
                    if source == "input"
                    else x
                )
                bi = b if source == "bias" else b.nan_to_num(0.0, 0.0, 0.0)
                for pool in ("avg", "max"):
                    for relu in (True, False):
                        args = ([stride] * 2, [padding] * 2, [1, 1], 1, pool, [3, 3], [2, 2],
                                [1, 1], True, relu)  # fmt: skip
                        fused, reference = conv_pool_op(xi, w, bi, *args), unfused(xi, w, bi, *args)
                        assert reference.isnan().any() and reference.isfinite().any()
                        torch.testing.assert_close(
                            fused, reference, equal_nan=True, **TOLERANCE,
                            msg=lambda m, c=(route, layout, source, pool, relu): f"{c}: {m}",
                        )  # fmt: skip


def test_non_finite_values_propagate_like_aten_on_every_route() -> None:
    """Average pooling after ReLU kept a NaN as 0 (``v > 0 ? v : 0``); the Winograd route spread
    non-finite inputs over 2x2 output blocks and turned infinities into NaN."""
    check_non_finite_routes()


def test_non_finite_values_propagate_like_aten_in_float64() -> None:
    """The generic (non-float32) epilogue: average pooling after ReLU of a NaN bias channel."""
    x, w, b = torch.randn(1, 4, 9, 9, dtype=torch.float64), torch.randn(6, 4, 3, 3).double(), None
    b = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5, -0.5, 1.0]).double()
    for pool in ("avg", "max"):
        args = ([1, 1], [1, 1], [1, 1], 1, pool, [2, 2], [2, 2], [0, 0], False, True)
        torch.testing.assert_close(
            conv_pool_op(x, w, b, *args), unfused(x, w, b, *args), equal_nan=True
        )


@pytest.mark.parametrize("isa", ["avx2", "sse2"])
def test_non_finite_values_propagate_like_aten_with_every_instruction_set(isa: str) -> None:
    """The same checks with narrower kernels (the direct and Winograd convolutions' register
    tiles, the pooling epilogues), chosen by DEEPREBIRTH_CPU_ISA in a fresh process."""
    run_with_cpu_isa(isa, "import test_op_reliability as t; t.check_non_finite_routes()")


def test_winograd_route_gives_aten_non_finite_outputs_for_random_layers() -> None:
    """Random Winograd-shaped layers (3x3, stride 1, C_in >= 8, C_out >= 16) with infinities
    and NaN in the input or the weight: every output as in ATen, not just "non-finite where ATen
    is" (the docstring's former promise, broken in most such cases)."""
    rng = random.Random(22)
    for case in range(40):
        cin, cout = rng.choice([8, 12, 16]), rng.choice([16, 24, 32])
        h, w_ = rng.randint(3, 24), rng.randint(3, 24)
        x = torch.randn(rng.randint(1, 2), cin, h, w_)
        w = torch.randn(cout, cin, 3, 3) / (9 * cin) ** 0.5
        if case % 4 == 3:
            w = _non_finite(w, case, 1)
        else:
            x = _non_finite(x, case, rng.randint(1, 3))
        if rng.random() < 0.5:
            x = x.contiguous(memory_format=torch.channels_last)
        b = torch.randn(cout)
        pool, relu, ceil = rng.choice(["max", "avg"]), rng.random() < 0.5, rng.random() < 0.5
        args = ([1, 1], [1, 1], [1, 1], 1, pool, [2, 2], [2, 2], [0, 0], ceil, relu)
        torch.testing.assert_close(
            conv_pool_op(x, w, b, *args), unfused(x, w, b, *args), equal_nan=True, **TOLERANCE,
            msg=lambda m, c=case: f"case {c}: {m}",
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# conv_pool's second derivatives


@pytest.mark.parametrize("pool, relu", [("max", True), ("avg", True), ("avg", False)])
def test_conv_pool_double_backward_matches_aten(pool: str, relu: bool) -> None:
    """gradgradcheck, without the autograd fallback's warning, and a Hessian-vector product
    equal to the unfused sequence's (it was half of it)."""
    torch.manual_seed(3)
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    args = ([1, 1], [1, 1], [1, 1], 1, pool, [2, 2], [2, 2], [1, 1], True, relu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.autograd.gradgradcheck(lambda *t: conv_pool_op(*t, *args), (x, w, b))

    def hessian_vector_product(fn) -> tuple[torch.Tensor, ...]:
        torch.manual_seed(4)
        out = fn(x, w, b, *args)
        grads = torch.autograd.grad(out, (x, w, b), torch.randn_like(out), create_graph=True)
        directions = [torch.randn_like(t) for t in (x, w, b)]
        dot = sum((g * d).sum() for g, d in zip(grads, directions, strict=True))
        return torch.autograd.grad(dot, (x, w, b))

    for got, want in zip(
        hessian_vector_product(conv_pool_op), hessian_vector_product(unfused), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# PackedConv2d: every weight update, bounded caches, threads


def _sgd_step(conv: nn.Conv2d, **options) -> None:
    conv.weight.grad = torch.randn_like(conv.weight)
    torch.optim.SGD([conv.weight], lr=0.5, **options).step()


def _adam_step(conv: nn.Conv2d, **options) -> None:
    conv.weight.grad = torch.randn_like(conv.weight)
    torch.optim.Adam([conv.weight], lr=0.5, **options).step()


def _copy_under_no_grad(conv: nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight))


def _write_through_numpy(conv: nn.Conv2d) -> None:
    conv.weight.detach().numpy()[0, 0, 0, 0] += 5.0


WEIGHT_UPDATES = {
    "data.mul_": lambda conv: conv.weight.data.mul_(2.0),
    "data, one value": lambda conv: conv.weight.data[1, 2, 0, 1].add_(3.0),
    "data = new tensor": lambda conv: setattr(conv.weight, "data", torch.randn_like(conv.weight)),
    "copy_ under no_grad": _copy_under_no_grad,
    "nn.init": lambda conv: nn.init.normal_(conv.weight),
    "NumPy view": _write_through_numpy,
    "load_state_dict": lambda conv: conv.load_state_dict(nn.Conv2d(4, 8, 3).state_dict()),
    "load_state_dict assign": lambda conv: conv.load_state_dict(
        nn.Conv2d(4, 8, 3).state_dict(), assign=True
    ),
    "new Parameter": lambda conv: setattr(conv, "weight", nn.Parameter(torch.randn(8, 4, 3, 3))),
    "SGD": _sgd_step,
    "SGD foreach": lambda conv: _sgd_step(conv, foreach=True),
    "Adam fused": lambda conv: _adam_step(conv, fused=True),
}


def _check_update_is_seen(monkeypatch, update: str, path: str, frozen: bool) -> None:
    """After a call has packed the weight, ``WEIGHT_UPDATES[update]`` gives the output of
    ``conv2d`` with the new weight (this call and the next), on the ``path`` taken."""
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", 0 if path == "onednn" else 1 << 30)
    torch.manual_seed(9)
    conv = PackedConv2d(4, 8, 3, padding=1, relu=True).eval()
    if frozen:
        assert freeze_packed_weights(nn.Sequential(conv, nn.ReLU())) == 1
    x = torch.randn(1, 4, 8, 8)

    def reference() -> torch.Tensor:
        return F.relu(F.conv2d(x, conv.weight, conv.bias, padding=1)).detach()

    before = reference()
    with torch.no_grad():
        torch.testing.assert_close(conv(x), before, **TOLERANCE)
    assert conv.packed_weights if path == "onednn" else conv._direct_weight  # the path ran
    snapshot = conv._weight_snapshot[0]
    # frozen weights keep no copy: the snapshot is the weight itself
    assert (snapshot.data_ptr() == conv.weight.data_ptr()) == frozen
    WEIGHT_UPDATES[update](conv)
    after = reference()
    assert not torch.allclose(after, before)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), after, **TOLERANCE)
        torch.testing.assert_close(conv(x), after, **TOLERANCE)  # and the next call


@pytest.mark.parametrize("path", ["direct", pytest.param("onednn", marks=needs_mkldnn)])
@pytest.mark.parametrize("update", list(WEIGHT_UPDATES))
def test_packed_conv2d_follows_every_weight_update(monkeypatch, update: str, path: str) -> None:
    """An update of any kind (writes through ``.data``, fused optimizer steps and NumPy views do
    not move the version counter) is seen, on the direct kernel's and oneDNN's packed path."""
    _check_update_is_seen(monkeypatch, update, path, frozen=False)


#: The updates autograd's version counter (or a new tensor) records: what frozen weights see.
#: Not recorded: writes through ``.data`` or NumPy, and fused optimizer steps.
UNVERSIONED_UPDATES = ("data.mul_", "data, one value", "NumPy view", "Adam fused")
VERSIONED_UPDATES = [name for name in WEIGHT_UPDATES if name not in UNVERSIONED_UPDATES]


@pytest.mark.parametrize("path", ["direct", pytest.param("onednn", marks=needs_mkldnn)])
@pytest.mark.parametrize("update", VERSIONED_UPDATES)
def test_frozen_packed_weights_follow_versioned_updates(
    monkeypatch, update: str, path: str
) -> None:
    """``freeze_packed_weights``: no byte-for-byte comparison and no snapshot copy, yet every
    update that moves the version counter or replaces the tensor is seen."""
    _check_update_is_seen(monkeypatch, update, path, frozen=True)


def test_kernel_choice_cache_keeps_the_most_recent_shapes() -> None:
    """Many input shapes (a server's batch and image sizes): at most max_kernel_shapes choices
    are kept, the least recently used dropped first."""
    conv = PackedConv2d(2, 4, 3, padding=1).eval()
    limit = PackedConv2d.max_kernel_shapes
    shapes = [(1, 2, 3 + i // 10, 3 + i % 10) for i in range(limit + 30)]
    with torch.no_grad():
        conv(torch.randn(shapes[0]))
        for shape in shapes[1:]:
            conv(torch.randn(shape))
            conv(torch.randn(shapes[0]))  # used again and again: kept
    assert len(conv._kernel_by_shape) == limit
    kept = {tuple(key[0]) for key in conv._kernel_by_shape}
    assert shapes[0] in kept and shapes[-1] in kept and shapes[1] not in kept


@needs_mkldnn
def test_threads_sharing_a_layer_keep_its_caches_bounded(monkeypatch) -> None:
    """Four threads calling one layer with different input shapes: correct outputs, at most
    max_packed_shapes packed copies and max_kernel_shapes kernel choices at any time."""
    monkeypatch.setattr(PackedConv2d, "min_packed_macs", 0)
    monkeypatch.setattr(PackedConv2d, "max_kernel_shapes", 3)
    torch.manual_seed(11)
    conv = PackedConv2d(8, 16, 3, padding=1).eval()
    inputs = [torch.randn(batch, 8, 10, 10) for batch in range(1, 5)]
    expected = [F.conv2d(x, conv.weight, conv.bias, padding=1).detach() for x in inputs]
    barrier = threading.Barrier(len(inputs))
    peaks, errors = [0, 0], []

    def serve(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(40):
                with torch.no_grad():
                    torch.testing.assert_close(conv(inputs[i]), expected[i], **TOLERANCE)
                peaks[0] = max(peaks[0], len(conv.packed_weights))
                peaks[1] = max(peaks[1], len(conv._kernel_by_shape))
        except Exception as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert peaks[0] <= PackedConv2d.max_packed_shapes and peaks[1] <= 3
    assert len(conv.packed_weights) <= PackedConv2d.max_packed_shapes


def test_bitwise_equal_sees_every_byte() -> None:
    """deeprebirth::bitwise_equal, the test behind PackedConv2d's caches: one changed value
    anywhere, in every layout (dense, strided, channels_last; large ones in parallel chunks), and
    bits rather than values (NaN equals itself, 0.0 is not -0.0), dtype and shape."""
    equal = torch.ops.deeprebirth.bitwise_equal
    torch.manual_seed(5)
    tensors = [
        torch.randn(7, 5, 3, 3),
        torch.randn(1 << 20),
        torch.randn(6, 8, 3, 3)[:, ::2],
        torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last),
    ]
    for a in tensors:
        assert equal(a, a.clone()) and equal(a, a.contiguous())
        for flat in (0, a.numel() // 2, a.numel() - 1):
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
            changed = a.clone()
            changed[index] += 1.0
            assert not equal(a, changed) and not equal(changed.contiguous(), a)
    nan = torch.tensor([float("nan"), 1.0])
    assert equal(nan, nan.clone()) and not equal(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert not equal(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    assert not equal(torch.zeros(2, 3), torch.zeros(3, 2)) and equal(torch.zeros(0), torch.zeros(0))
