"""deeprebirth's fastest PyTorch path on x86 CPUs: frozen TorchScript of the portable model run
with TorchScript's oneDNN Graph fuser.

The fuser (``torch.jit.enable_onednn_fusion``) hands whole runs of convolutions, ReLUs, pools and
concatenations to oneDNN Graph, which keeps activations in its blocked layout between them and
runs no Python or operator dispatch in between: what OpenVINO does with the same oneDNN kernels.
deeprebirth's own operators are opaque to it, so the model is made portable first
(:func:`~deeprebirth.export.make_portable`); every operator of the result is a standard one.

The fuser is a process-wide TorchScript setting. :class:`OneDNNGraphModule` turns it on only
while its own forwards run (the fused plan is built during the first calls for each input shape
and kept), so other TorchScript modules in the process keep theirs.

Some patterns fuse into oneDNN kernels slower than ATen's: a square root followed by a product ran
oneDNN's reference eltwise kernel before the LRN rewrite was reordered (docs/export.md).
:func:`to_onednn_graph` therefore measures the fused module against the same frozen module
unfused on the example input and keeps the faster one.

Example:
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    >>> fast = to_onednn_graph(net, torch.randn(1, 3, 16, 16))
    >>> torch.allclose(fast(torch.ones(1, 3, 16, 16)), net(torch.ones(1, 3, 16, 16)), atol=1e-6)
    True
"""

from __future__ import annotations

import contextlib
import io
import statistics
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

from deeprebirth.export.portable import make_portable

# Fused forwards running now, and the fuser setting before the first of them started.
_active = 0
_previous = False
_lock = threading.Lock()


@contextlib.contextmanager
def onednn_fusion() -> Iterator[None]:
    """TorchScript's oneDNN Graph fuser on while the block runs (in any thread), then as it was.

    Nested and concurrent blocks share one switch: it goes back when the last of them ends.
    """
    global _active, _previous
    with _lock:
        if _active == 0:
            _previous = torch.jit.onednn_fusion_enabled()
            torch.jit.enable_onednn_fusion(True)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                torch.jit.enable_onednn_fusion(_previous)


class OneDNNGraphModule(nn.Module):
    """A frozen TorchScript module whose forwards run with the oneDNN Graph fuser on (or off,
    when ``fused`` is False: then it is the frozen module as is); fused, one copy per input shape.

    The fuser compiles each partition for the shapes it saw first: a later call of another shape
    fails the partition's guard and runs the unfused fallback graph (GoogLeNet-Slim at batch 8
    after batch 1: 1.4x slower). Each input shape therefore gets a fresh copy of the module,
    loaded from the bytes of the original (saved when a second shape first needs them), which
    builds its own plan during its first calls.
    Each copy holds the weights again: at most ``max_shapes`` are kept (least recently used go).

    Attributes:
        module: the frozen ``torch.jit.ScriptModule`` (the first shape's copy).
        fused: whether forwards run fused.
        choice: why ``fused`` is what it is (the measured times when :func:`to_onednn_graph`
            chose).
        max_shapes: input shapes whose copies are kept.
    """

    def __init__(
        self,
        module: torch.jit.ScriptModule,
        fused: bool = True,
        choice: str = "",
        max_shapes: int = 4,
    ) -> None:
        super().__init__()
        if max_shapes < 1:
            raise ValueError(f"expected max_shapes >= 1, but got {max_shapes}")
        self.module = module
        self.fused = fused
        self.choice = choice or ("fused" if fused else "not fused")
        self.max_shapes = max_shapes
        self._saved: bytes | None = None  # the module's bytes, once a second shape needs a copy
        self._copies: OrderedDict[tuple, torch.jit.ScriptModule] = OrderedDict()
        self._copies_lock = threading.Lock()

    def _copy_for(self, x: torch.Tensor) -> torch.jit.ScriptModule:
        # Unfused, one module serves every shape (and its MKLDNN constants could not be saved).
        if not self.fused:
            return self.module
        key = (tuple(x.shape), x.dtype, x.device)
        with self._copies_lock:
            copy = self._copies.get(key)
            if copy is None:
                copy = self.module if not self._copies else self._load_copy(x.device)
                self._copies[key] = copy
                while len(self._copies) > self.max_shapes:
                    self._copies.popitem(last=False)
            self._copies.move_to_end(key)
            return copy

    def _load_copy(self, device: torch.device) -> torch.jit.ScriptModule:
        if self._saved is None:
            buffer = io.BytesIO()
            torch.jit.save(self.module, buffer)
            self._saved = buffer.getvalue()
        return torch.jit.load(io.BytesIO(self._saved), map_location=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's output for ``x``; the first calls of each input shape build its plan."""
        module = self._copy_for(x)
        if not self.fused:
            return module(x)
        with onednn_fusion():
            return module(x)

    def extra_repr(self) -> str:
        return f"fused={self.fused}, choice={self.choice!r}"


def _ms(run: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    run(x)
    return (time.perf_counter() - start) * 1e3


def _frozen(traced: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    # A fresh frozen copy each time: a fused and an unfused plan cannot share one module.
    # No MKLDNN rewrites (optimize_for_inference): they would hide the convolutions from the fuser.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=Warning)
        return torch.jit.freeze(traced.eval())


def to_onednn_graph(
    model: nn.Module, example_input: torch.Tensor, measure: bool = True, rounds: int = 5
) -> OneDNNGraphModule:
    """``model`` (any form, deeprebirth operators included) as frozen, traced TorchScript of its
    portable form run by the oneDNN Graph fuser, warmed up on ``example_input``.

    Args:
        model: the network; it is not modified.
        example_input: an input batch: the trace follows its path and keeps its height and
            width (other batch sizes run); the fused plan for its shape is built here.
        measure: time ``rounds`` interleaved forwards fused and unfused on ``example_input``
            (after warm-up) and keep the faster (the result's ``choice`` says both medians);
            False: always fused.
        rounds: timed forwards of each, with ``measure``.

    Raises:
        ValueError: ``rounds`` < 1.
    """
    if rounds < 1:
        raise ValueError(f"expected rounds >= 1, but got {rounds}")
    # Traced, not scripted: the fuser fails ("bad optional access") on scripted graphs whose
    # branches never ran while it profiled (LocalResponseNorm2d's rank check, for one).
    with torch.no_grad():
        traced = torch.jit.trace(make_portable(model).eval(), example_input, check_trace=False)
    fused = OneDNNGraphModule(_frozen(traced), fused=True)
    with torch.no_grad():
        for _ in range(3):  # profiling run, then the optimized plan
            fused(example_input)
        if not measure:
            return fused
        plain = OneDNNGraphModule(torch.jit.optimize_for_inference(_frozen(traced)), fused=False)
        for _ in range(3):
            plain(example_input)
        fused_ms, plain_ms = [], []
        for _ in range(rounds):
            fused_ms.append(_ms(fused, example_input))
            plain_ms.append(_ms(plain, example_input))
    fused_median, plain_median = statistics.median(fused_ms), statistics.median(plain_ms)
    times = f"{fused_median:.2f} ms fused vs {plain_median:.2f} ms unfused on the example"
    winner = fused if fused_median <= plain_median else plain
    winner.choice = ("fused: " if winner is fused else "not fused: ") + times
    return winner
