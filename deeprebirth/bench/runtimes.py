"""One model, several ways to run it: eager, TorchScript, torch.compile, ONNX Runtime,
ExecuTorch (XNNPACK), OpenVINO.

:func:`build_runtime` returns a :class:`Runtime`: a callable ``run(x)`` plus how long it took to
build and how far its output is from eager's, or ``run=None`` with the reason when this machine
cannot build it (torch.compile without a C++ compiler, an exporter failure …), so one missing peer
never stops a benchmark. Runtimes (:data:`RUNTIMES`):

- ``eager``: the ``nn.Module`` as is.
- ``eager_channels_last``: the module and its input in channels_last memory format.
- ``torchscript``: ``torch.jit.freeze(torch.jit.script(model))`` (traced where scripting fails).
- ``jit_optimized``: ``torch.jit.optimize_for_inference`` of that frozen module.
- ``compile``: ``torch.compile(model)`` (inductor, static shapes; compiled on the first call).
- ``compile_freezing``: the same with inductor's ``freezing`` (weights folded into the graph as
  constants, convolution weights prepacked), the setting a server deployment uses.
- ``onnxruntime``: deeprebirth's ONNX export (portable) in an ONNX Runtime session with every
  graph optimisation (``ORT_ENABLE_ALL``) and ``threads`` intra-op threads.
- ``executorch_1t`` / ``executorch_2t``: deeprebirth's ``.pte`` export (portable, XNNPACK
  delegate) in the ExecuTorch runtime on 1 / 2 threads. A program runs one input shape, so one is
  lowered per shape on first use (in the warm-up); the thread pool is process-wide, so
  :attr:`Runtime.prepare` resizes it before each timed call, untimed.
- ``openvino`` / ``openvino_bf16``: deeprebirth's OpenVINO IR compiled for the CPU per input shape
  (static shapes) in f32, and in bf16 (moves the outputs: its ``max_abs_diff`` says how far).
- ``executorch_int8_1t`` / ``executorch_int8_2t`` / ``inductor_int8``: the model quantized to int8
  (:mod:`deeprebirth.quantize`, calibrated on 32 standard-normal images: ranges do not change
  the speed) as an XNNPACK ``.pte`` per input shape, and compiled by inductor with ``freezing``
  (oneDNN int8 kernels); the outputs move (``max_abs_diff``).
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

RUNTIMES: dict[str, str] = {
    "eager": "eager",
    "eager_channels_last": "eager channels_last",
    "torchscript": "TorchScript frozen",
    "torchscript_onednn": "TorchScript oneDNN Graph",
    "jit_optimized": "jit optimize_for_inference",
    "compile": "torch.compile",
    "compile_freezing": "torch.compile freezing",
    "onnxruntime": "ONNX Runtime",
    "executorch_1t": "ExecuTorch XNNPACK 1T",
    "executorch_2t": "ExecuTorch XNNPACK 2T",
    "openvino": "OpenVINO f32",
    "openvino_bf16": "OpenVINO bf16",
    "executorch_int8_1t": "ExecuTorch XNNPACK int8 1T",
    "executorch_int8_2t": "ExecuTorch XNNPACK int8 2T",
    "inductor_int8": "torch.compile freezing int8",
}

Forward = Callable[[torch.Tensor], object]


@dataclass
class Runtime:
    """A built runtime of one model.

    Attributes:
        name: key of :data:`RUNTIMES`.
        run: ``run(x)`` computes the model's output; None when unavailable.
        build_s: seconds to build (export, compile on the example …).
        note: why it is unavailable, or how it was built (e.g. "traced").
        max_abs_diff: largest absolute difference from eager's output on the example.
        prepare: called (untimed) before each timed call of ``run``, for runtimes whose settings
            are process-wide (ExecuTorch's thread pool); None when there is nothing to do.
        folder: the temporary folder of its files when :func:`build_runtime` made one (deleted
            with the Runtime, or at exit).
    """

    name: str
    run: Forward | None
    build_s: float = 0.0
    note: str = ""
    max_abs_diff: float | None = None
    prepare: Callable[[], None] | None = None
    folder: tempfile.TemporaryDirectory | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        """The runtime's name in tables."""
        return RUNTIMES[self.name]


def eager_channels_last(model: nn.Module) -> Forward:
    """A channels_last copy's forward: converts the input too.

    Example:
        >>> run = eager_channels_last(nn.Conv2d(3, 4, 3))
        >>> run(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 4, 6, 6])
    """
    converted = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        return converted(x.contiguous(memory_format=torch.channels_last))

    return run


def torchscript_frozen(
    model: nn.Module, example: torch.Tensor, optimize: bool = False
) -> torch.jit.ScriptModule:
    """``freeze(script or trace)`` of ``model``; with ``optimize``, also
    ``torch.jit.optimize_for_inference`` (MKLDNN-prepacked convolutions on CPU)."""
    from deeprebirth.export.torchscript import script_or_trace

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        scripted = script_or_trace(model.eval(), example)
        frozen = torch.jit.freeze(scripted.eval())
        return torch.jit.optimize_for_inference(frozen) if optimize else frozen


def compiled(model: nn.Module, example: torch.Tensor, freezing: bool = False) -> Forward:
    """``torch.compile(model)``, compiled here by one call on ``example`` (raises if it fails);
    with ``freezing``, inductor's ``freezing`` option, which holds for recompilations too (it
    applies under ``torch.no_grad`` / ``inference_mode``, as the benchmark times)."""
    options = {"freezing": True} if freezing else None
    run = torch.compile(model, dynamic=False, options=options)
    with torch.inference_mode():
        run(example)
    return run


def onnxruntime_forward(
    model: nn.Module, example: torch.Tensor, path: Path, threads: int
) -> Forward:
    """Exports ``model`` to ONNX at ``path`` and returns an ONNX Runtime session's forward
    (``ORT_ENABLE_ALL``, ``threads`` intra-op threads, CUDA provider when the input is on CUDA
    and onnxruntime has it)."""
    import onnxruntime

    import deeprebirth

    deeprebirth.export(model, example.cpu(), format="onnx", out=path)
    options = onnxruntime_options(threads)
    providers = ["CPUExecutionProvider"]
    if example.is_cuda:
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError("this onnxruntime has no CUDAExecutionProvider")
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    input_name = session.get_inputs()[0].name

    def run(x: torch.Tensor):
        return torch.from_numpy(session.run(None, {input_name: x.cpu().numpy()})[0])

    return run


class _PerShape:
    """A runtime that builds one program per input shape on first use: ``build(shape)`` returns
    the forward of a program for exactly that shape; :attr:`runs` holds them by shape."""

    def __init__(self, build: Callable[[tuple[int, ...]], Forward]) -> None:
        self._build = build
        self.runs: dict[tuple[int, ...], Forward] = {}

    def __call__(self, x: torch.Tensor) -> object:
        shape = tuple(x.shape)
        if shape not in self.runs:
            self.runs[shape] = self._build(shape)
        return self.runs[shape](x)


class ExecuTorchRuns(_PerShape):
    """``model``'s ``.pte`` programs run by ExecuTorch on ``threads`` threads: one program per
    input shape, lowered on first use into ``folder`` (shared by every thread count).

    :meth:`prepare` (untimed, before each timed call) resizes the process-wide pool to
    ``threads`` when it has another size, and then runs each program once: a runner reloads its
    method after a resize (:func:`~deeprebirth.export.executorch.executorch_runner`), so no
    timed call pays for a load or the delegate's first-call setup.
    """

    def __init__(self, model: nn.Module, folder: Path, threads: int, int8: bool = False) -> None:
        super().__init__(self._lower_and_load)
        self.model, self.folder, self.threads, self.int8 = model, folder, threads, int8
        self._generation = -1
        self.prepare()

    def _lower_and_load(self, shape: tuple[int, ...]) -> Forward:
        import contextlib
        import io

        import deeprebirth
        from deeprebirth.export.loading import load_exported

        kind = "-int8" if self.int8 else ""
        name = (
            f"{type(self.model).__name__}-{id(self.model):x}{kind}-{'x'.join(map(str, shape))}.pte"
        )
        path = self.folder / name
        if not path.exists() and self.int8:
            from deeprebirth.quantize import save_quantized

            save_quantized(int8_model(self.model, torch.zeros(shape), "xnnpack"), path)
        elif not path.exists():  # another thread count's runtime may have lowered it
            with contextlib.redirect_stdout(io.StringIO()):  # the delegation line
                deeprebirth.export(self.model, torch.zeros(shape), "executorch", out=path)
        run = load_exported(path)
        run(torch.zeros(shape))  # the delegate's first-call setup, untimed
        return run

    def prepare(self) -> None:
        """Sizes the pool for this runtime and, if that resized it, runs each program once."""
        from deeprebirth.export.executorch import set_executorch_threads, thread_pool_generation

        set_executorch_threads(self.threads)
        if self._generation != thread_pool_generation():
            self._generation = thread_pool_generation()
            for shape, run in self.runs.items():
                run(torch.zeros(shape))  # reloads the method for the new pool


def int8_model(model: nn.Module, example: torch.Tensor, backend: str):
    """``model`` quantized to int8 for ``backend`` at ``example``'s shape, calibrated on 32
    standard-normal images (:func:`deeprebirth.quantize.quantize_model`): for timing only."""
    from deeprebirth.quantize import quantize_model

    images = torch.randn(32, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    return quantize_model(model, images, backend, example_input=torch.zeros_like(example).cpu())


def openvino_forward(model: nn.Module, example: torch.Tensor, precision: str, threads: int):
    """``model`` converted to OpenVINO once and compiled per input shape (static shapes, as a
    server would), at ``precision`` on ``threads`` threads."""
    from deeprebirth.export.openvino import compile_openvino, compiled_forward, to_openvino

    ov_model = to_openvino(model, example.cpu())

    def build(shape: tuple[int, ...]) -> Forward:
        ov_model.reshape(list(shape))
        return compiled_forward(compile_openvino(ov_model, precision, threads))

    return _PerShape(build)


def onnxruntime_options(threads: int) -> Any:
    """The benchmark's ``onnxruntime.SessionOptions``: ``ORT_ENABLE_ALL``, ``threads`` intra-op
    threads, one inter-op thread, no spinning."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT's idle threads spin-wait by default and steal the cores from the variant timed next
    # (interleaved runs), which then reads much slower (docs/benchmarks.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:160] if lines else ''}"


def _max_abs_diff(run: Forward, model: nn.Module, example: torch.Tensor) -> float:
    with torch.inference_mode():
        expected, actual = model(example), run(example)
    return (
        (torch.as_tensor(actual).to(expected.device).float() - expected.float()).abs().max().item()
    )


def build_runtime(
    name: str,
    model: nn.Module,
    example: torch.Tensor,
    threads: int | None = None,
    workdir: Path | None = None,
) -> Runtime:
    """Builds runtime ``name`` (a key of :data:`RUNTIMES`) of ``model`` for inputs like ``example``.

    Never raises for a runtime this machine cannot build: the returned ``Runtime.run`` is then
    None and ``note`` says why.

    Args:
        threads: intra-op threads for ONNX Runtime and OpenVINO (default: torch's current
            setting); ExecuTorch's are in the runtime's name.
        workdir: where the ONNX and ``.pte`` files go (default: a temporary folder).

    Raises:
        ValueError: unknown runtime name.

    Example:
        >>> rt = build_runtime("torchscript", nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 8, 8))
        >>> rt.run is not None and rt.max_abs_diff < 1e-5
        True
    """
    if name not in RUNTIMES:
        raise ValueError(f"expected a runtime in {sorted(RUNTIMES)}, but got {name!r}")
    model = model.eval()
    started, note, prepare = time.perf_counter(), "", None
    threads = threads or torch.get_num_threads()
    temporary = None if workdir else tempfile.TemporaryDirectory(prefix="deeprebirth-")
    folder = Path(workdir or temporary.name)
    try:
        if name == "eager":
            run: Forward = model
        elif name == "eager_channels_last":
            run = eager_channels_last(model)
        elif name in ("torchscript", "jit_optimized"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                run = torchscript_frozen(model, example, optimize=name == "jit_optimized")
            if any("tracing instead" in str(w.message) for w in caught):
                note = "traced (torch.jit.script failed)"
        elif name == "torchscript_onednn":
            from deeprebirth.export.onednn_graph import to_onednn_graph

            run = to_onednn_graph(model, example)
            note = run.choice
        elif name in ("compile", "compile_freezing"):
            run = compiled(model, example, freezing=name == "compile_freezing")
        elif name.startswith("executorch_"):
            threads_run = int(name.rsplit("_", 1)[1][:-1])
            run = ExecuTorchRuns(model, folder, threads_run, int8="_int8_" in name)
            prepare = run.prepare
            note = "int8: outputs move (see max abs diff)" if run.int8 else ""
        elif name == "inductor_int8":
            from deeprebirth.quantize import inductor_runner

            run = inductor_runner(int8_model(model, example, "x86_inductor").module, example)
            note = f"int8: {run.int8_kernels} oneDNN int8 conv/linear; outputs move"
        elif name.startswith("openvino"):
            precision = "bf16" if name == "openvino_bf16" else "f32"
            run = openvino_forward(model, example, precision, threads)
            if precision == "bf16":
                note = "bf16 arithmetic: outputs move (see max abs diff)"
        else:
            path = folder / f"{type(model).__name__}-{id(model):x}.onnx"
            run = onnxruntime_forward(model, example, path, threads)
        diff = _max_abs_diff(run, model, example)
    except Exception as error:  # exporters and compilers raise many unrelated types
        if temporary is not None:
            temporary.cleanup()
        return Runtime(
            name, None, time.perf_counter() - started, f"unavailable ({_first_line(error)})"
        )
    return Runtime(name, run, time.perf_counter() - started, note, diff, prepare, temporary)
