"""Where each runtime spends a forward of the same model: deeprebirth's deployed form in eager
under ``torch.profiler``, and its portable form under OpenVINO's per-layer counters, ONNX
Runtime's profiler and ExecuTorch (whole program), side by side.

Every kernel, operator or node a runtime reports gets one category of :data:`CATEGORIES` by
:func:`kernel_category`, one rule for every runtime's names (``mkldnn::_convolution_pointwise``,
``deeprebirth::branch_conv``, OpenVINO's ``Convolution``, ONNX Runtime's ``Conv`` are all
convolutions), so the breakdowns line up. What a runtime spends outside its kernels (Python,
operator dispatch, the runtime's own bookkeeping) is the profiled forward's wall time minus its
kernels' time.

- deeprebirth deployed, eager: top-level operators of :func:`~deeprebirth.bench.profiling.profile_forward`
  (an operator called inside another counts as part of its caller), the model's own submodules
  not annotated (each annotation costs microseconds that would read as overhead).
- OpenVINO f32: ``PERF_COUNT`` counters of every executed node (``get_profiling_info``), by node
  type and the primitive that ran it (``Convolution (brgconv_avx512_1x1_f32)``, ``Reorder …``).
- ONNX Runtime: the ``*_kernel_time`` events of its profiler's JSON trace, by op type.
- ExecuTorch XNNPACK: the whole program only. Its per-operator trace (ETDump) needs a runtime
  built with ``EXECUTORCH_ENABLE_EVENT_TRACER``, which the PyPI wheel is not; :func:`etdump_recorded`
  checks the installed one.

Example:
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    >>> profile = profile_eager(model, torch.randn(1, 3, 16, 16), forwards=2)
    >>> profile.category_ms()["convolution"] > 0, profile.category_ms()["concatenation"]
    (True, 0.0)
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deeprebirth.bench.context import BenchContext
from deeprebirth.bench.profiling import profile_forward
from deeprebirth.bench.runtimes import ExecuTorchRuns, _first_line, onnxruntime_options
from deeprebirth.bench.tables import MISSING, ResultPage, timing_cell
from deeprebirth.bench.timing import (
    RUNTIME_SETTLE_MS,
    Timing,
    benchmark_allocator,
    interleaved_timings,
)
from deeprebirth.bench.zoo import in_form

CATEGORIES = (
    "convolution",
    "linear",
    "concatenation",
    "pooling",
    "normalization",
    "activation",
    "elementwise",
    "layout copies",
    "weight checks",
    "views and reshapes",
    "other",
)
# First match wins: fused convolutions (``conv_pool``, ``small_conv2d_cat``) are convolutions,
# ``addmm`` is linear before ``add`` is elementwise.
_CATEGORY_RULES = [
    ("weight checks", r"bitwise_equal|(^|::)equal$"),
    ("convolution", r"conv(?!ert)"),  # not OpenVINO's Convert
    ("linear", r"linear|addmm|matmul|gemm|fullyconnected|innerproduct|(^|::)b?mm$"),
    ("concatenation", r"(^|::)cat$|concat"),
    ("pooling", r"pool|reducemean|(^|::)mean$"),
    ("normalization", r"norm|lrn"),
    ("activation", r"relu|elu|sigmoid|gelu|silu|swish|hardtanh|clamp|clip|tanh|softmax"),
    ("elementwise", r"add|mul|sub|div|eltwise|(^|::)sum$"),
    ("layout copies", r"copy|contiguous|to_dense|to_mkldnn|reorder|transpose|permute|clone|::to$"),
    ("views and reshapes", r"view|reshape|flatten|narrow|squeeze|detach|slice|split|select|"
     r"as_strided|expand|shapeof|gather"),
]  # fmt: skip
_COMPILED_RULES = [
    (category, re.compile(rule, re.IGNORECASE)) for category, rule in _CATEGORY_RULES
]

EAGER = "deeprebirth deployed, eager"
OPENVINO = "OpenVINO f32"
ONNXRUNTIME = "ONNX Runtime"
EXECUTORCH = "ExecuTorch XNNPACK"


def kernel_category(name: str) -> str:
    """The :data:`CATEGORIES` entry of a kernel, operator or node name of any runtime.

    Example:
        >>> [kernel_category(n) for n in ("mkldnn::_convolution_pointwise", "Concat", "aten::relu_")]
        ['convolution', 'concatenation', 'activation']
        >>> kernel_category("deeprebirth::conv_pool"), kernel_category("aten::addmm")
        ('convolution', 'linear')
    """
    for category, rule in _COMPILED_RULES:
        if rule.search(name):
            return category
    return "other"


@dataclass(frozen=True)
class KernelTime:
    """One kernel name's time in a forward: ``ms`` and ``calls`` are per forward (means over the
    profiled forwards); ``category`` from :func:`kernel_category`."""

    name: str
    category: str
    ms: float
    calls: float


@dataclass
class RuntimeProfile:
    """A runtime's profiled forwards of one model at one input shape.

    Attributes:
        runtime: its name in tables.
        forward_ms: mean wall time of a profiled forward (None: the runtime is unavailable).
        kernels: time per kernel name, largest first; empty when the runtime reports none.
        note: why it is unavailable, or what its profile cannot show.
        plain: unprofiled timing of the same forward, when measured.
    """

    runtime: str
    forward_ms: float | None = None
    kernels: list[KernelTime] = field(default_factory=list)
    note: str = ""
    plain: Timing | None = None

    @property
    def kernel_ms(self) -> float:
        """Time in the reported kernels per forward (ms)."""
        return sum(k.ms for k in self.kernels)

    @property
    def outside_ms(self) -> float | None:
        """Wall time outside the reported kernels per forward (ms): dispatch, Python, the
        runtime's own work; None without kernel times."""
        if self.forward_ms is None or not self.kernels:
            return None
        return self.forward_ms - self.kernel_ms

    @property
    def calls(self) -> float:
        """Kernels (operators, nodes) executed per forward."""
        return sum(k.calls for k in self.kernels)

    def category_ms(self) -> dict[str, float]:
        """``{category: ms per forward}`` for every entry of :data:`CATEGORIES`, in order."""
        totals = dict.fromkeys(CATEGORIES, 0.0)
        for kernel in self.kernels:
            totals[kernel.category] += kernel.ms
        return totals


def aggregate_kernels(records: Iterable[tuple[str, str, float]], forwards: int) -> list[KernelTime]:
    """Per-forward time and calls of each kernel name from ``(name, category, ms)`` records of
    ``forwards`` forward passes, largest time first.

    Example:
        >>> aggregate_kernels([("Conv", "convolution", 2.0), ("Conv", "convolution", 4.0)], 2)
        [KernelTime(name='Conv', category='convolution', ms=3.0, calls=1.0)]
    """
    totals: dict[str, list] = {}
    for name, category, ms in records:
        entry = totals.setdefault(name, [category, 0.0, 0])
        entry[1] += ms
        entry[2] += 1
    kernels = [
        KernelTime(name, category, ms / forwards, calls / forwards)
        for name, (category, ms, calls) in totals.items()
    ]
    return sorted(kernels, key=lambda k: -k.ms)


class _Unannotated(nn.Module):
    """Calls ``model`` without registering it as a submodule, so ``profile_forward`` annotates
    the root call only."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "inner", model)

    def forward(self, x: torch.Tensor) -> Any:
        return self.inner(x)


def profile_eager(
    model: nn.Module, example: torch.Tensor, forwards: int = 5, warmup: int = 1
) -> RuntimeProfile:
    """``model(example)`` in eager under ``torch.profiler``: its top-level operators by name.

    One forward more than ``forwards`` is profiled and the first left out when every forward
    ran the same operators: the first forward under a new profiler read several times slower
    than the next ones in our runs.

    Args:
        model: an eager ``nn.Module`` in eval mode (deeprebirth's deployed form, or any).
        example: the input, ``(N, C, H, W)``.
        forwards: profiled forward passes; ``warmup``: unprofiled ones first.
    """
    profile = profile_forward(_Unannotated(model), example, forwards=forwards + 1, warmup=warmup)
    walls, ops = profile.module_ms[""], profile.ops
    per_forward = len(ops) // len(walls)
    if per_forward and per_forward * len(walls) == len(ops):
        names = [op.name for op in ops]
        if all(
            names[i : i + per_forward] == names[:per_forward]
            for i in range(0, len(names), per_forward)
        ):
            walls, ops = walls[1:], ops[per_forward:]
    records = ((op.name, kernel_category(op.name), op.ms) for op in ops)
    return RuntimeProfile(
        EAGER,
        statistics.fmean(walls),
        aggregate_kernels(records, len(walls)),
        "top-level operators (torch.profiler)",
    )


def _openvino_compiled(ov_model: Any, shape: tuple[int, ...], threads: int, counters: bool) -> Any:
    """``ov_model`` compiled for ``shape`` as the benchmark's f32 runtime compiles it
    (``compile_openvino``), with ``PERF_COUNT`` on when ``counters`` (a compiled model cannot
    turn it on afterwards)."""
    from deeprebirth.export.openvino import compile_openvino

    ov_model.reshape(list(shape))
    return compile_openvino(ov_model, "f32", threads, **({"PERF_COUNT": True} if counters else {}))


def _executed_node_us(request: Any, runs: int) -> dict[str, tuple[str, str, float]]:
    """``{node name: (label, category, total µs over the request's runs)}`` of every executed
    node: OpenVINO's CPU counters report each node's mean over all runs of the request so far,
    in whole microseconds, so ``mean x runs`` is its total (within ``runs`` µs)."""
    return {
        node.node_name: (
            f"{node.node_type} ({node.exec_type})",
            kernel_category(node.node_type),
            node.real_time.total_seconds() * 1e6 * runs,
        )
        for node in request.get_profiling_info()
        if node.status == node.Status.EXECUTED
    }


def profile_openvino(
    ov_model: Any, example: torch.Tensor, forwards: int = 5, warmup: int = 1, threads: int = 1
) -> RuntimeProfile:
    """An ``openvino.Model`` (``to_openvino`` of the portable model) compiled in f32 on
    ``threads`` threads with per-node counters, run on ``example``: each executed node's time by
    ``"<node type> (<primitive>)"``, the warm-up runs taken out of the counters' running means.

    Raises:
        ImportError: openvino is not installed.
    """
    compiled = _openvino_compiled(ov_model, tuple(example.shape), threads, counters=True)
    request = compiled.create_infer_request()
    data = {0: example.detach().cpu().contiguous().numpy()}
    warmup = max(1, warmup)
    for _ in range(warmup):
        request.infer(data)
    before = _executed_node_us(request, warmup)
    walls = []
    for _ in range(forwards):
        start = time.perf_counter()
        request.infer(data)
        walls.append((time.perf_counter() - start) * 1e3)
    records = []
    for node, (label, category, total_us) in _executed_node_us(request, warmup + forwards).items():
        ms = (total_us - before.get(node, (label, category, 0.0))[2]) / 1e3 / forwards
        records += [(label, category, max(0.0, ms))] * forwards
    return RuntimeProfile(
        OPENVINO,
        statistics.fmean(walls),
        aggregate_kernels(records, forwards),
        "executed nodes, PERF_COUNT",
    )


def onnxruntime_session(path: Path, threads: int, trace_prefix: Path | None = None) -> Any:
    """An ONNX Runtime CPU session of ``path`` as the benchmark's runtime builds it
    (``ORT_ENABLE_ALL``, ``threads`` intra-op threads, no spin-waiting), writing a profiler
    trace under ``trace_prefix`` when given.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    import onnxruntime

    options = onnxruntime_options(threads)
    if trace_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(trace_prefix)
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnxruntime_kernel_records(
    trace: list[dict], skip_runs: int = 0
) -> tuple[list[float], list[tuple[str, str, float]]]:
    """Wall time of each ``model_run`` (ms) and the ``(op type, category, ms)`` of every node
    kernel inside them, from an ONNX Runtime profiler trace (its JSON list of events), leaving
    out the first ``skip_runs`` runs (warm-up)."""
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])
    runs = runs[skip_runs:]
    walls = [run["dur"] / 1e3 for run in runs]
    records = []
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if any(run["ts"] <= event["ts"] <= run["ts"] + run["dur"] for run in runs):
            op = event.get("args", {}).get("op_name", event["name"])
            records.append((op, kernel_category(op), event["dur"] / 1e3))
    return walls, records


def profile_onnxruntime(
    path: Path, example: torch.Tensor, forwards: int = 5, warmup: int = 1, threads: int = 1
) -> RuntimeProfile:
    """The ONNX file at ``path`` run on ``example`` in a profiling session
    (:func:`onnxruntime_session`): kernel time by op type; the trace goes next to ``path``.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    session = onnxruntime_session(path, threads, trace_prefix=path.with_suffix(""))
    feed = {session.get_inputs()[0].name: example.detach().cpu().contiguous().numpy()}
    for _ in range(warmup + forwards):
        session.run(None, feed)
    trace_path = Path(session.end_profiling())
    trace = json.loads(trace_path.read_text())
    trace_path.unlink()
    walls, records = onnxruntime_kernel_records(trace, skip_runs=warmup)
    return RuntimeProfile(
        ONNXRUNTIME,
        statistics.fmean(walls),
        aggregate_kernels(records, forwards),
        "node kernels, ORT profiler",
    )


_etdump_recorded: bool | None = None


def etdump_recorded(pte: Path) -> bool:
    """Whether the installed ExecuTorch runtime writes an ETDump (per-operator trace) for the
    program at ``pte``: it does only when built with ``EXECUTORCH_ENABLE_EVENT_TRACER``. Checked
    once per process (the runtime logs "No etdump data found" when it is not).

    Raises:
        ImportError: executorch is not installed.
    """
    global _etdump_recorded
    if _etdump_recorded is None:
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(str(pte), enable_etdump=True)
        method = program.load_method("forward")
        method.execute([torch.zeros(tuple(method.metadata.input_tensor_meta(0).sizes()))])
        out, debug = pte.with_suffix(".etdump"), pte.with_suffix(".debug")
        program.write_etdump_result_to_file(str(out), str(debug))
        _etdump_recorded = out.is_file() and out.stat().st_size > 0
        out.unlink(missing_ok=True)
        debug.unlink(missing_ok=True)
    return _etdump_recorded


def time_executorch(
    runs: ExecuTorchRuns, example: torch.Tensor, forwards: int = 5, warmup: int = 1
) -> RuntimeProfile:
    """The whole ExecuTorch program (``runs``, lowered on first use) on ``example``: wall time
    only, with a note on whether this runtime could record an ETDump."""
    runs.prepare()
    for _ in range(max(1, warmup)):
        runs(example)  # the first call lowers the program for this shape
    walls = []
    for _ in range(forwards):
        runs.prepare()
        start = time.perf_counter()
        runs(example)
        walls.append((time.perf_counter() - start) * 1e3)
    pte = next(runs.folder.glob("*.pte"))
    note = (
        "whole program only: this ExecuTorch runtime records ETDump, not parsed here"
        if etdump_recorded(pte)
        else "whole program only: this ExecuTorch runtime records no ETDump (built without "
        "EXECUTORCH_ENABLE_EVENT_TRACER, as the PyPI wheel is)"
    )
    return RuntimeProfile(f"{EXECUTORCH} {runs.threads}T", statistics.fmean(walls), [], note)


class RuntimeProfiler:
    """Profiles one model in every runtime of this module at any input shape, building each
    runtime once (OpenVINO conversion, ONNX export, ExecuTorch lowering per shape).

    Args:
        deployed: deeprebirth's deployed form (run in eager).
        portable: the same model in standard operators (given to the other runtimes).
        threads: intra-op threads of OpenVINO, ONNX Runtime and ExecuTorch (torch's stay as set).
        workdir: where the ONNX and ``.pte`` files and the traces go.
    """

    def __init__(
        self, deployed: nn.Module, portable: nn.Module, threads: int, workdir: Path
    ) -> None:
        self.deployed, self.portable = deployed.eval(), portable.eval()
        self.threads, self.workdir = threads, Path(workdir)
        self.runtimes = (EAGER, OPENVINO, ONNXRUNTIME, f"{EXECUTORCH} {threads}T")
        self._built: dict[str, Any] = {}

    def _artifact(self, runtime: str, example: torch.Tensor) -> Any:
        """What ``runtime`` runs at any shape, built once: the ``openvino.Model``, the ONNX
        file, the ExecuTorch runs (raises what the exporter raises)."""
        if runtime not in self._built:
            example = example[:1]
            if runtime == OPENVINO:
                from deeprebirth.export.openvino import to_openvino

                self._built[runtime] = to_openvino(self.portable, example)
            elif runtime == ONNXRUNTIME:
                import deeprebirth

                path = self.workdir / f"profile-{id(self.portable):x}.onnx"
                deeprebirth.export(self.portable, example, format="onnx", out=path)
                self._built[runtime] = path
            else:
                self._built[runtime] = ExecuTorchRuns(self.portable, self.workdir, self.threads)
        return self._built[runtime]

    def _profile(
        self, runtime: str, example: torch.Tensor, forwards: int, warmup: int
    ) -> RuntimeProfile:
        if runtime == EAGER:
            return profile_eager(self.deployed, example, forwards, warmup)
        artifact = self._artifact(runtime, example)
        if runtime == OPENVINO:
            return profile_openvino(artifact, example, forwards, warmup, self.threads)
        if runtime == ONNXRUNTIME:
            return profile_onnxruntime(artifact, example, forwards, warmup, self.threads)
        return time_executorch(artifact, example, forwards, warmup)

    def _unprofiled(self, runtime: str, example: torch.Tensor) -> Callable[[torch.Tensor], Any]:
        """``runtime``'s forward without profiling (after :meth:`_profile` built it)."""
        if runtime == EAGER:
            return self.deployed
        artifact = self._artifact(runtime, example)
        if runtime == OPENVINO:
            from deeprebirth.export.openvino import compiled_forward

            shape = tuple(example.shape)
            return compiled_forward(_openvino_compiled(artifact, shape, self.threads, False))
        if runtime == ONNXRUNTIME:
            session = onnxruntime_session(artifact, self.threads)
            name = session.get_inputs()[0].name
            return lambda x: session.run(None, {name: x.detach().cpu().contiguous().numpy()})
        return artifact

    def profile(
        self, example: torch.Tensor, forwards: int = 5, warmup: int = 1, repeats: int = 10
    ) -> list[RuntimeProfile]:
        """Every runtime's profile on ``example`` (in :attr:`runtimes` order, one after the
        other), then their unprofiled forwards timed interleaved, ``repeats`` rounds, into
        :attr:`RuntimeProfile.plain`. A runtime that fails to build or run gets
        ``forward_ms=None`` and the reason in ``note``."""
        warmup = max(1, warmup)
        profiles, calls, prepare = [], {}, {}
        with benchmark_allocator(), torch.inference_mode():
            for runtime in self.runtimes:
                try:
                    profile = self._profile(runtime, example, forwards, warmup)
                    run = self._unprofiled(runtime, example)
                except Exception as error:  # exporters and runtimes raise many unrelated types
                    profile = RuntimeProfile(runtime, note=f"unavailable ({_first_line(error)})")
                else:
                    calls[runtime] = lambda run=run: run(example)
                    if isinstance(run, ExecuTorchRuns):
                        prepare[runtime] = run.prepare
                profiles.append(profile)
            timings = interleaved_timings(
                calls, repeats, warmup, prepare, settle_ms=RUNTIME_SETTLE_MS
            )
        for profile in profiles:
            profile.plain = timings.get(profile.runtime)
        return profiles


def _ms_share(ms: float | None, total: float | None) -> str:
    if ms is None:
        return MISSING
    return f"{ms:.3f} ({100 * ms / total:.0f}%)" if total else f"{ms:.3f}"


def side_by_side_rows(profiles: list[RuntimeProfile]) -> list[list[str]]:
    """Rows of the side-by-side table: time per category (ms and share of the profiled forward)
    in each runtime, then kernels, outside kernels, the forward and kernels per forward."""
    categories = [
        c for c in CATEGORIES if any(p.category_ms()[c] > 0 for p in profiles if p.kernels)
    ]

    def cells(value: Callable[[RuntimeProfile], float | None]) -> list[str]:
        return [
            _ms_share(value(p) if p.forward_ms is not None else None, p.forward_ms)
            for p in profiles
        ]

    rows = [
        [c, *cells(lambda p, c=c: p.category_ms()[c] if p.kernels else None)] for c in categories
    ]
    rows.append(
        [
            "**non-convolution kernels**",
            *cells(lambda p: p.kernel_ms - p.category_ms()["convolution"] if p.kernels else None),
        ]
    )
    rows.append(["**all kernels**", *cells(lambda p: p.kernel_ms if p.kernels else None)])
    rows.append(["**outside kernels**", *cells(lambda p: p.outside_ms)])
    rows.append(["**forward, profiled (mean)**", *cells(lambda p: p.forward_ms)])
    rows.append(["**forward, unprofiled**", *(timing_cell(p.plain) for p in profiles)])
    rows.append(
        [
            "kernels per forward",
            *(
                f"{p.calls:.0f}" if p.kernels else ("1 program" if p.forward_ms else MISSING)
                for p in profiles
            ),
        ]
    )
    return rows


def kernel_rows(profile: RuntimeProfile) -> list[list[str]]:
    """Rows of one runtime's table: category, kernel, calls and ms per forward, share of the
    profiled forward; then the time outside kernels."""
    total = profile.forward_ms
    rows = [
        [k.category, k.name, f"{k.calls:g}", f"{k.ms:.3f}", f"{100 * k.ms / total:.1f}%"]
        for k in profile.kernels
    ]
    outside = profile.outside_ms
    rows.append(
        ["-", "**outside kernels**", "-", f"{outside:.3f}", f"{100 * outside / total:.1f}%"]
    )
    return rows


NOTE = (
    "All runtimes on the same model, one after the other in this process, on the same input. "
    "deeprebirth deployed: the exact rules with deeprebirth's operators and "
    "`flatten_for_inference`, in eager; its kernels are the top-level operators "
    "`torch.profiler` records, and *outside kernels* is Python, dispatch and the profiler's own "
    "cost between them. The other runtimes run the portable form (standard operators): OpenVINO "
    "f32 with `PERF_COUNT` (executed nodes by type and primitive; *outside* is the rest of the "
    "infer call), ONNX Runtime with its profiler (`*_kernel_time` events by op type; *outside* "
    "is the rest of `model_run`), ExecuTorch-XNNPACK as one program: its per-operator trace "
    "(ETDump) needs a runtime built with `EXECUTORCH_ENABLE_EVENT_TRACER`, which the PyPI wheel "
    "is not; the note under each table says what this one records. Categories: one name rule "
    "for every runtime (`deeprebirth.bench.runtime_profiles.kernel_category`). *forward, "
    "unprofiled*: the same calls without profiling, timed interleaved (median [min, max]), the "
    "figure to compare runtimes by; the profiled columns are for proportions."
)


def runtime_profiles_page(ctx: BenchContext) -> ResultPage:
    """The ``runtime_profiles`` page of a :class:`~deeprebirth.bench.context.BenchContext`:
    each of ``deployed_models`` at each batch, every runtime side by side, then one table per
    runtime (CPU)."""
    cfg = ctx.config
    page = ResultPage(
        "Where each runtime spends a forward: deployed path vs peers, profiled",
        cfg.settings_line(),
    )
    for spec in cfg.deployed_models:
        profiler = RuntimeProfiler(
            ctx.model(in_form(spec, "deployed")),
            ctx.model(in_form(spec, "portable")),
            torch.get_num_threads(),
            ctx.workdir,
        )
        for batch in cfg.batches:
            profiles = profiler.profile(
                ctx.example(batch), cfg.profile_forwards, cfg.warmup, cfg.repeats
            )
            page.add_table(
                f"{spec.label}, batch {batch}: side by side (ms per forward, share)",
                ["category", *(p.runtime for p in profiles)],
                side_by_side_rows(profiles),
                "; ".join(f"{p.runtime}: {p.note}" for p in profiles if p.note),
            )
            for profile in profiles:
                if profile.kernels:
                    page.add_table(
                        f"{spec.label}, batch {batch}: {profile.runtime}",
                        ["category", "kernel", "calls / forward", "ms / forward", "share"],
                        kernel_rows(profile),
                    )
    page.add_text(NOTE)
    return page
