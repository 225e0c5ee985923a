"""Convolutions whose CPU inference runs on weights packed once: :class:`PackedConv2d`,
:class:`PackedConvConcat` and its standard form :class:`ConvConcat`.

No ``from __future__ import annotations`` here: TorchScript reads PackedConv2d's annotations.
"""

import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

import deeprebirth.ops  # noqa: F401  (loads torch.ops.deeprebirth.direct_conv)


class PackedConv2d(nn.Conv2d):
    """``Conv2d`` (optionally with its ReLU) whose CPU inference runs on weights packed once.

    oneDNN reorders a plain convolution's weights on every call; this module keeps the packed copy.
    Float32 CPU inference (eval, no autograd, not scripted, traced, exported or compiled) runs
    oneDNN on it for calls of at least :attr:`min_packed_macs` multiply-accumulates (ReLU and
    ``forward(x, residual)``'s add fused; channels_last output), ``deeprebirth::small_conv2d`` for
    smaller ungrouped, undilated ones (in TorchScript too, which then needs deeprebirth's library):
    on the weight's snapshot it times the direct kernel against oneDNN on the first call of an
    input shape and keeps the faster; any other call is ``Conv2d`` then ReLU. Frozen TorchScript (``torch.jit.freeze``, the C++
    runner's exports) keeps oneDNN packed copies of its constant weights in ``small_conv2d``.
    3x3 stride-1 layers (ungrouped, at least 8 input and 16 output channels) take that C++ path
    in eager too, on a snapshot of the weight: it runs Winograd F(2x2, 3x3) or F(4x4, 3x3) on a
    transformed weight wherever that timed faster than oneDNN on the first call of an input shape
    (``DEEPREBIRTH_PACKED_WINOGRAD=0`` turns it off, ``=1`` and ``=4`` skip the timing for
    F(2x2) and F(4x4)), each kernel timed on its weight read from memory
    (``DEEPREBIRTH_PACKED_TIMING=warm``: from cache; docs/kernels.md).
    Equal to :meth:`to_standard` up to float32 rounding (Winograd: about 1e-6 of the output's
    magnitude, F(4x4) about 1e-5).

    Weight updates: packed copies are used only while the weight is bitwise equal to their snapshot,
    else remade, so every update is seen (``.data``, fused optimizers, ``load_state_dict`` ...).
    Memory: the snapshot, the direct copy and at most :attr:`max_packed_shapes` oneDNN copies.
    Thread safe: a lock guards the caches.

    Args:
        *args, **kwargs: as for ``nn.Conv2d`` (``padding_mode="zeros"``, numeric padding).
        relu: apply ReLU to the output.

    Raises:
        ValueError: settings it cannot run, named in the message (:func:`packing_problem`).

    Shape: as ``nn.Conv2d``.

    Example:
        >>> conv = PackedConv2d(3, 8, 3, padding=1, relu=True).eval()
        >>> torch.allclose(conv(x := torch.randn(1, 3, 8, 8)), conv.to_standard()(x), atol=1e-5)
        True
    """

    __jit_ignored_attributes__ = [
        "packed_weights",
        "_kernel_by_shape",
        "_direct_weight",
        "_weight_snapshot",
        "_last_packed",
        "_cache_lock",
    ]
    # constants, so that TorchScript can read them in _small_conv2d
    __constants__ = [*nn.Conv2d.__constants__, "min_packed_macs", "max_direct_1x1_pixels"]
    #: Calls with fewer multiply-accumulates skip oneDNN: its fixed cost per call exceeds what
    #: packing saves on small layers (docs/kernels.md, "Packed convolutions"). Set it on an
    #: instance or the class.
    min_packed_macs: int = 1 << 22
    #: 1x1 calls with more output pixels per image than this run conv2d: on large images a GEMM
    #: over the pixels beats the direct kernel, on small ones the direct kernel wins.
    max_direct_1x1_pixels: int = 64
    #: oneDNN copies kept per layer, one per input shape (the most recently used ones).
    max_packed_shapes: int = 2
    #: Input shapes whose kernel choice a layer keeps (the most recently used ones).
    max_kernel_shapes: int = 64
    #: Trust the weight's version counter instead of comparing its bytes with the packed copies'
    #: snapshot on every call, and keep no snapshot copy. Comparing reads the weights twice per
    #: forward, a large share of a deployed model's time (docs/kernels.md). Like
    #: ``torch.jit.freeze``, which makes weights constants: in-place updates, optimizer steps,
    #: ``load_state_dict`` and new tensors are still seen; writes that bypass autograd's version
    #: counter (through ``.data``, a NumPy view, fused optimizer steps such as
    #: ``Adam(fused=True)``) are not. Set by :func:`freeze_packed_weights`.
    frozen_weights: bool = False

    def __init__(self, *args, relu: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        problem = packing_problem(self)
        if problem:
            raise ValueError(problem)
        self.relu = relu
        self._init_caches()

    def _init_caches(self) -> None:
        self._cache_lock = threading.Lock()
        # (input shape, snapshot generation) -> oneDNN's packed copy, least recently used first
        self.packed_weights: OrderedDict = OrderedDict()
        # (input shape, min_packed_macs) -> _kernel_for_shape, least recently used first
        self._kernel_by_shape: OrderedDict = OrderedDict()
        self._direct_weight: tuple = ()  # (snapshot generation, direct_conv_pack(snapshot))
        # (the weight's values packed, generation, _version_key of the weight they came from)
        self._weight_snapshot: tuple = (None, 0, None)
        # (input shape, min_packed_macs, generation, packed weight) of the last packed call: a
        # repeated call skips the cache lookups above, most of a small layer's Python time
        self._last_packed: tuple = ()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: bool = False) -> "PackedConv2d":
        """A PackedConv2d sharing ``conv``'s weight and bias (exact; ``relu`` fuses a ReLU).

        Raises:
            ValueError: ``conv`` uses a padding mode other than zeros or string padding.
        """
        return _conv_sharing_weights(cls, conv, relu=relu)

    def to_standard(self) -> nn.Module:
        """The standard layers it computes.

        Returns:
            an ``nn.Conv2d`` sharing this module's weight and bias (in an ``nn.Sequential`` with
            ``nn.ReLU`` when ``relu``).
        """
        conv = _conv_sharing_weights(nn.Conv2d, self)
        return nn.Sequential(conv, nn.ReLU()) if self.relu else conv

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")

    def train(self, mode: bool = True) -> "PackedConv2d":
        if mode:  # the weights are about to change: free the packed copies
            with self._cache_lock:
                self._drop_packed_copies()
        return super().train(mode)

    def _drop_packed_copies(self, snapshot: tuple | None = None) -> None:
        """Frees the packed copies and the snapshot, or puts ``snapshot`` (values, generation,
        version key) in its place. The caller holds ``_cache_lock``."""
        self.packed_weights = OrderedDict()
        self._direct_weight = ()
        self._last_packed = ()
        self._weight_snapshot = snapshot or (None, self._weight_snapshot[1] + 1, None)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # oneDNN's opaque tensors can be neither copied nor pickled, nor can a lock
        for name in _CACHES:
            state.pop(name, None)
        state.pop("_cache_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        for name in _CACHES:
            state.pop(name, None)  # older pickles may hold caches of another form: rebuild them
        super().__setstate__(state)
        self._init_caches()

    def macs(self, input_shape: Sequence[int]) -> int:
        """Multiply-accumulates of one call on an input of ``input_shape`` (N, C, H, W)."""
        # Imported here: deeprebirth.surgery imports this package.
        from deeprebirth.surgery.accounting import conv2d_macs

        return conv2d_macs(self, tuple(input_shape))

    @torch.jit.unused
    def _inference_kernel(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> str:
        """ "packed" (oneDNN, packed weights), "small" (``deeprebirth::small_conv2d``) or "" (the
        plain ``Conv2d`` forward) for a call on ``x``. Runs on every call of layers that may take
        microseconds: the shape-dependent choice is cached per shape, and the per-call checks run
        only when it is not the plain forward."""
        if _traced(x):
            return ""
        key = (x.shape, self.min_packed_macs)
        with self._cache_lock:
            kernel = self._kernel_by_shape.get(key)
            if kernel is None:
                kernel = self._kernel_for_shape(x.shape)
                self._kernel_by_shape[key] = kernel
                while len(self._kernel_by_shape) > max(1, self.max_kernel_shapes):
                    self._kernel_by_shape.popitem(last=False)
            else:
                self._kernel_by_shape.move_to_end(key)
        return kernel if kernel and self._cpu_inference(x, kernel, residual) else ""

    @torch.jit.unused
    def _cpu_inference(
        self, x: torch.Tensor, kernel: str, residual: torch.Tensor | None = None
    ) -> bool:
        """Whether a call on ``x`` (adding ``residual``) may take ``kernel`` now: float32 CPU
        inference, no tracing or autocast, and no gradient wanted for any input: oneDNN's ops have
        no derivative, so a bias or residual that requires grad takes the plain path too (the
        per-call part of :meth:`_inference_kernel`)."""
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        return (
            not self.training
            and x.is_cpu
            and x.dtype == torch.float32
            and weight.is_cpu
            and weight.dtype == torch.float32
            and not (
                torch.is_grad_enabled()
                and (
                    x.requires_grad
                    or weight.requires_grad
                    or (bias is not None and bias.requires_grad)
                    or (residual is not None and residual.requires_grad)
                )
            )
            and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled("cpu")
            and (kernel not in ("packed", "winograd") or torch.backends.mkldnn.enabled)
        )

    @torch.jit.unused
    def _kernel_for_shape(self, shape: torch.Size) -> str:
        if len(shape) != 4 or shape.numel() == 0:
            return ""
        if self.macs(shape) >= self.min_packed_macs:
            if not torch.backends.mkldnn.is_available():
                return ""
            return "winograd" if self._winograd_shaped() else "packed"
        return "small" if self.groups == 1 and self.dilation == (1, 1) else ""

    @torch.jit.unused
    def _winograd_shaped(self) -> bool:
        """Whether ``small_conv2d`` may run this layer with Winograd, which it then chooses where
        it measures faster than oneDNN (the conditions of ``winograd_conv_applies`` in
        csrc/ops/winograd_conv/cpu/winograd_conv_kernel.h)."""
        return (
            self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.in_channels >= 8
            and self.out_channels >= 16
        )

    @torch.jit.unused
    def _packed_path_applies(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
        return self._inference_kernel(x, residual) in ("packed", "winograd")

    @torch.jit.unused
    def _current_snapshot(self) -> tuple:
        """``(snapshot, generation)``: the weight's present values (a copy, or the weight itself
        when :attr:`frozen_weights`), and the number that names the packed copies made from them
        (a new snapshot and number when the weight changed, its stale copies dropped)."""
        weight = self._parameters["weight"]
        current = self._weight_snapshot
        if self._snapshot_holds(weight, current):
            return current[:2]
        with self._cache_lock:  # another thread may have taken the new snapshot meanwhile
            current = self._weight_snapshot
            if not self._snapshot_holds(weight, current):
                values = weight.detach()
                if self.frozen_weights and weight.is_inference():
                    warnings.warn(_INFERENCE_WEIGHT_WARNING, stacklevel=2)
                if not self._trusts_version(weight):
                    # a normal tensor even under inference_mode: C++ keeps packed copies only
                    # of weights with a version counter
                    with torch.inference_mode(False):
                        values = values.clone()
                current = (values, current[1] + 1, _version_key(weight))
                self._drop_packed_copies(current)
            return current[:2]

    @torch.jit.unused
    def _plan_state(self) -> tuple:
        """What a recorded forward through this layer assumed (``deeprebirth.nn.op_plan``): its
        weight's values (the snapshot generation, None before the first snapshot) and the
        settings its kernel choice reads."""
        generation = None
        if self._weight_snapshot[0] is not None:  # no snapshot taken here, none used either
            generation = self._current_snapshot()[1]
        return (generation, self.min_packed_macs, self.max_direct_1x1_pixels, self.relu)

    @torch.jit.unused
    def _snapshot_holds(self, weight: torch.Tensor, snapshot: tuple) -> bool:
        """Whether ``snapshot`` still has ``weight``'s values: compared byte for byte, or, when
        :attr:`frozen_weights`, by the weight's identity, storage and version counter."""
        values, _, key = snapshot
        if values is None:
            return False
        if self._trusts_version(weight):
            return key == _version_key(weight)
        return torch.ops.deeprebirth.bitwise_equal(weight, values)

    @torch.jit.unused
    def _trusts_version(self, weight: torch.Tensor) -> bool:
        """Whether the weight's version counter tells its updates (:attr:`frozen_weights`): not
        for an inference tensor (made under ``torch.inference_mode``), which has none."""
        return self.frozen_weights and not weight.is_inference()

    @torch.jit.unused
    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """oneDNN's packed copy of the weight for inputs shaped like ``x`` (made on first use).

        Where the operator library runs oneDNN primitives of its own (:func:`_own_onednn`), the
        weight's snapshot stands for it: the library packs it into the layer's primitive on its
        first call and keeps both while the snapshot lives."""
        snapshot, generation = self._current_snapshot()
        key = (tuple(x.shape), generation)
        with self._cache_lock:
            weight = self.packed_weights.get(key)
            if weight is not None:
                self.packed_weights.move_to_end(key)
                self._last_packed = (x.shape, self.min_packed_macs, generation, weight)
                return weight
            # At most max_packed_shapes input shapes: each packed copy is as large as the weight,
            # and a server sees many batch sizes.
            if _own_onednn():
                weight = snapshot
            else:
                weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    snapshot.to_mkldnn(),
                    list(self.padding),
                    list(self.stride),
                    list(self.dilation),
                    self.groups,
                    list(x.shape),
                )
            if generation == self._weight_snapshot[1]:  # not stale already
                self.packed_weights[key] = weight
                while len(self.packed_weights) > max(1, self.max_packed_shapes):
                    self.packed_weights.popitem(last=False)
                self._last_packed = (x.shape, self.min_packed_macs, generation, weight)
            return weight

    @torch.jit.unused
    def _onednn_args(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> tuple:
        """``(x, packed weight, bias, padding, stride, dilation, groups)`` for the
        ``mkldnn::_convolution_pointwise`` ops, ``x`` made dense for oneDNN (``weight``: the
        packed weight when the caller has it)."""
        x = _dense(x)
        bias = self._parameters["bias"]  # no gradient wanted here (_cpu_inference): not detached
        geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        return (x, self._packed_weight(x) if weight is None else weight, bias, *geometry)

    @torch.jit.unused
    def _repeated_packed_weight(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The packed weight when this call repeats the last packed call (same input shape,
        :attr:`min_packed_macs` and weight values, packed kernel allowed), else None."""
        last = self._last_packed
        if (
            _traced(x)
            or not last
            or last[0] != x.shape
            or last[1] != self.min_packed_macs
            or not self._cpu_inference(x, "packed", residual)
            or last[2] != self._current_snapshot()[1]
        ):
            return None
        return last[3]

    @torch.jit.unused
    def _packed_forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x, *conv = self._onednn_args(x, weight)
        if not conv[0].is_mkldnn:  # a snapshot: the library's own primitive (_packed_weight)
            if residual is None:
                return self._small_conv2d(x, conv[0], _NO_DIRECT_WEIGHT, conv[1], self.relu, 0)
            return self._own_onednn_add_(residual.clone(), x, conv[0])
        if residual is not None and self.relu:  # relu(conv(x) + residual) in one oneDNN call
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, *conv, "add", 1.0, "relu", [], ""
            )
        attr = "relu" if self.relu and residual is None else "none"
        y = torch.ops.mkldnn._convolution_pointwise(x, *conv, attr, [], "")
        return y if residual is None else y + residual

    @torch.jit.unused
    def _own_onednn_add_(
        self, residual: torch.Tensor, x: torch.Tensor, snapshot: torch.Tensor
    ) -> torch.Tensor:
        """``relu?(conv(x) + residual)`` over ``residual`` by the library's own oneDNN primitive
        of ``snapshot`` (the weight's values), as frozen TorchScript runs it."""
        return torch.ops.deeprebirth.small_conv2d_add_(
            residual,
            x,
            snapshot,
            _NO_DIRECT_WEIGHT,
            self._parameters["bias"],
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.relu,
            0,
            0,
        )

    @torch.jit.unused
    def _snapshot_forward(self, x: torch.Tensor, relu: bool, direct: bool) -> torch.Tensor:
        """``small_conv2d`` on the weight's snapshot (a tensor that needs no gradient and stays
        while the weight's values do), as frozen TorchScript runs the layer: it keeps the packed
        copies in C++ and, on the first call of each input shape, times oneDNN against Winograd
        (3x3 stride-1 layers) and, where ``direct`` and the layer is small enough, the direct
        kernel, keeping the fastest (docs/kernels.md, "Kernel choice on frozen weights")."""
        # Parameters read from _parameters: nn.Module.__getattr__ is slow next to the few
        # microseconds a small layer takes.
        current = self._current_snapshot()
        bias = self._parameters["bias"]
        if not direct:
            return self._small_conv2d(x, current[0], _NO_DIRECT_WEIGHT, bias, relu, 0)
        return self._small_conv2d(x, current[0], self._direct_packed_weight(current), bias, relu)

    @torch.jit.unused
    def _direct_packed_weight(self, current: tuple | None = None) -> torch.Tensor:
        """``direct_conv_pack(weight)``, kept while the weight's values stay (``current``: the
        ``_current_snapshot()`` the caller took)."""
        snapshot, generation = current or self._current_snapshot()
        direct = self._direct_weight
        if not direct or direct[0] != generation:
            direct = (generation, torch.ops.deeprebirth.direct_conv_pack(snapshot))
            with self._cache_lock:
                if generation == self._weight_snapshot[1]:  # not stale already
                    self._direct_weight = direct
        return direct[1]

    def _small_conv2d(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        packed_weight: torch.Tensor,
        bias: torch.Tensor | None,
        relu: bool,
        max_direct_macs: int = -1,
    ) -> torch.Tensor:
        # deeprebirth::small_conv2d: the direct kernel where it pays (below max_direct_macs,
        # min_packed_macs when negative), oneDNN or Winograd on frozen weights, conv2d otherwise.
        return torch.ops.deeprebirth.small_conv2d(
            x,
            weight,
            packed_weight,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            relu,
            self.min_packed_macs if max_direct_macs < 0 else max_direct_macs,
            self.max_direct_1x1_pixels,
        )

    def _scripted_forward(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        # TorchScript: one small_conv2d call, no branches of the graph's own. The weight is
        # packed by the graph; torch.jit.freeze folds that into a constant.
        packed_weight = torch.ops.deeprebirth.direct_conv_pack(self.weight)
        if residual is None:
            return self._small_conv2d(x, self.weight, packed_weight, self.bias, self.relu)
        y = self._small_conv2d(x, self.weight, packed_weight, self.bias, False) + residual
        return y.relu_() if self.relu else y

    def add_into_(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``relu?(conv(x) + residual)`` written over ``residual``, which it returns.

        For a residual that nothing reads afterwards (a block's fresh shortcut output): on the
        packed path with a channels_last ``residual`` oneDNN accumulates into it as it writes
        (its "sum" post-op), which saves the separate add pass and a second output tensor.
        Elsewhere it is ``residual.add_(conv(x))`` (then ``relu_``). In TorchScript one
        ``deeprebirth::small_conv2d_add_`` call, which does the same on frozen weights.
        """
        if not torch.jit.is_scripting():
            return self._eager_add_into_(x, residual)
        packed_weight = torch.ops.deeprebirth.direct_conv_pack(self.weight)
        return torch.ops.deeprebirth.small_conv2d_add_(
            residual,
            x,
            self.weight,
            packed_weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.relu,
            self.min_packed_macs,
            self.max_direct_1x1_pixels,
        )

    @torch.jit.unused
    def _eager_add_into_(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        if self._packed_path_applies(x, residual):
            x, *conv = self._onednn_args(x)
            if not conv[0].is_mkldnn:  # a snapshot: the library's own primitive
                return self._own_onednn_add_(residual, x, conv[0])
            unary = "relu" if self.relu else None
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                residual, x, *conv, "add", 1.0, unary, [], ""
            )
        residual.add_(self._conv_forward(x, self.weight, self.bias))
        return residual.relu_() if self.relu else residual

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``relu?(conv(x) [+ residual])``: the residual is added before the ReLU."""
        if not torch.jit.is_scripting():
            return self._eager_forward(x, residual)
        return self._scripted_forward(x, residual)

    @torch.jit.unused
    def _eager_forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        weight = self._repeated_packed_weight(x, residual)
        if weight is not None:
            return self._packed_forward(x, residual, weight)
        kernel = self._inference_kernel(x, residual)
        if kernel == "winograd" and residual is None:
            return self._snapshot_forward(x, self.relu, direct=False)
        if kernel in ("packed", "winograd"):
            return self._packed_forward(x, residual)
        if kernel == "small":
            if residual is None:
                return self._snapshot_forward(x, self.relu, direct=True)
            y = self._snapshot_forward(x, False, direct=True)
        else:
            weight, bias = self._parameters["weight"], self._parameters["bias"]
            y = self._conv_forward(x, weight, bias)
        if residual is not None:
            y = y + residual
        return y.relu_() if self.relu else y  # y is this call's own tensor


class ConvConcat(nn.Module):
    """``cat([conv_i(x_i) for i], 1)``: layers over their own inputs, outputs concatenated along
    channels (the standard form of :class:`PackedConvConcat`).

    Shape:
        ``[(N, C_i, H_i, W_i)] -> (N, sum of output channels, H_out, W_out)``.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        outputs = []
        for i, layer in enumerate(self.layers):  # a loop: TorchScript compiles it
            outputs.append(layer(xs[i]))
        return torch.cat(outputs, 1)


class PackedConvConcat(nn.Module):
    """``cat([conv_i(x_i) for i], 1)`` over :class:`PackedConv2d` layers (one ReLU setting) in one
    ``deeprebirth::small_conv2d_cat`` call: where every layer takes the direct kernel, each output
    is written straight into its channels of the result and no ``torch.cat`` runs (an Inception
    module's branches after branch slimming); otherwise the layers' own forwards and ``torch.cat``.

    ``flatten_for_inference`` puts it where a concatenation's inputs are such layers' outputs and
    nothing else reads them. It shares the layers (and their weights); equal to ``ConvConcat`` of
    them up to float32 rounding. TorchScript takes the packed weights when it scripts the module
    (``__prepare_scriptable__``): script or export it once the weights are final, as
    ``deeprebirth.export`` does.

    Args:
        convs: PackedConv2d layers, all with or all without a fused ReLU, ungrouped, undilated.

    Raises:
        ValueError: ``convs`` does not fit (the message says why; :meth:`problem`).
    """

    __constants__ = ["relu", "min_packed_macs", "max_direct_1x1_pixels"]
    __jit_ignored_attributes__ = ["_last_call"]
    _script_weights: list[torch.Tensor]
    _script_packed: list[torch.Tensor]
    _script_biases: list[torch.Tensor | None]
    _script_strides: list[int]
    _script_paddings: list[int]

    def __init__(self, convs: Sequence[PackedConv2d]) -> None:
        super().__init__()
        problem = self.problem(convs)
        if problem:
            raise ValueError(problem)
        self.convs = nn.ModuleList(convs)
        self.relu = convs[0].relu
        self.min_packed_macs = min(conv.min_packed_macs for conv in convs)
        self.max_direct_1x1_pixels = min(conv.max_direct_1x1_pixels for conv in convs)
        # (input shapes, snapshot generations, kernel thresholds, kernels, layers,
        # small_conv2d_cat's arguments) of the last call that took the C++ path: a repeated call skips the checks
        # and list-building that cost about as much as a small module's arithmetic
        self._last_call: tuple = ()
        self.__prepare_scriptable__()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_last_call", None)  # the layers' snapshots, which copies do not share
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._last_call = ()

    @staticmethod
    def problem(convs: Sequence[nn.Module]) -> str:
        """'' when ``convs`` can form a PackedConvConcat, else why not."""
        if len(convs) < 2:
            return f"expected at least two layers, but got {len(convs)}"
        for i, conv in enumerate(convs):
            if not isinstance(conv, PackedConv2d):
                return f"layer {i} is a {type(conv).__name__}, not a PackedConv2d"
            if conv.groups != 1 or tuple(conv.dilation) != (1, 1):
                return f"layer {i} has groups={conv.groups}, dilation={conv.dilation}"
            if conv.relu != convs[0].relu:
                return f"layer {i} has relu={conv.relu}, layer 0 relu={convs[0].relu}"
        return ""

    def to_standard(self) -> ConvConcat:
        """The standard layers it computes.

        Returns:
            a :class:`ConvConcat` of the layers' ``to_standard()`` forms (sharing their weights).
        """
        return ConvConcat([conv.to_standard() for conv in self.convs])

    @torch.jit.unused
    def _op_arguments(self, direct: bool = True) -> tuple[list, list, list, list, list]:
        """The layers' weights, packed weights, biases, strides and paddings as
        ``small_conv2d_cat`` takes them (the packed weights current; none unless ``direct``)."""
        convs = list(self.convs)
        return (
            [conv.weight for conv in convs],
            [conv._direct_packed_weight() for conv in convs] if direct else [],
            [conv.bias for conv in convs],
            [v for conv in convs for v in conv.stride],
            [v for conv in convs for v in conv.padding],
        )

    def __prepare_scriptable__(self) -> "PackedConvConcat":
        # TorchScript reads the layers' settings and packed weights from plain lists taken here
        # (torch.jit.script calls this first), which torch.jit.freeze turns into constants.
        (
            self._script_weights,
            self._script_packed,
            self._script_biases,
            self._script_strides,
            self._script_paddings,
        ) = self._op_arguments()
        return self

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._eager_forward(xs)
        return self._op(
            xs,
            self._script_weights,
            self._script_packed,
            self._script_biases,
            self._script_strides,
            self._script_paddings,
        )

    @torch.jit.unused
    def _eager_forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        repeated = self._repeated_call(xs)
        if repeated is not None:
            snapshots, direct, biases, strides, paddings = repeated
            return self._op(xs, snapshots, direct, biases, strides, paddings)
        convs = list(self.convs)
        if torch.compiler.is_compiling() or len(xs) != len(convs):
            return torch.cat([conv(x) for conv, x in zip(convs, xs, strict=True)], 1)
        kernels = [conv._inference_kernel(x) for conv, x in zip(convs, xs, strict=True)]
        if set(kernels) <= {"small", "packed", "winograd"} and set(kernels) != {"packed"}:
            # small_conv2d_cat's C++ path on the weights' snapshots, as frozen TorchScript runs
            # it and as for one such layer (PackedConv2d._snapshot_forward): each layer takes the
            # kernel timed fastest, and Winograd layers write into their channels of the output
            _, _, biases, strides, paddings = self._op_arguments(direct=False)
            snapshots, direct, generations = [], [], []
            for conv, kernel in zip(convs, kernels, strict=True):
                current = conv._current_snapshot()
                snapshots.append(current[0])
                generations.append(current[1])
                small = kernel == "small"
                direct.append(conv._direct_packed_weight(current) if small else _NO_DIRECT_WEIGHT)
            self._last_call = (
                tuple(x.shape for x in xs),
                tuple(generations),
                tuple(conv.min_packed_macs for conv in convs),
                kernels,
                convs,
                (snapshots, direct, strides, paddings),
            )
            return self._op(xs, snapshots, direct, biases, strides, paddings)
        self._last_call = ()
        return torch.cat([conv(x) for conv, x in zip(convs, xs, strict=True)], 1)

    @torch.jit.unused
    def _repeated_call(self, xs: list[torch.Tensor]) -> tuple | None:
        """``small_conv2d_cat``'s arguments after ``xs`` (snapshots, direct weights, biases,
        strides, paddings) when this call repeats the last one that took the C++ path: inputs
        of the same shapes, and every layer at the same kernel threshold (so the same kernel,
        ``_inference_kernel``'s cache key), allowed it now (the per-call checks of
        ``PackedConv2d._cpu_inference``) and with the same weight values (snapshot
        generation). Else None, and the full checks run."""
        last = self._last_call
        if not last or len(xs) != len(last[0]):
            return None
        shapes, generations, thresholds, kernels, convs, args = last
        biases = []
        layers = zip(xs, shapes, generations, thresholds, kernels, convs, strict=True)
        for x, shape, generation, threshold, kernel, conv in layers:
            if (
                _traced(x)
                or x.shape != shape
                or conv.min_packed_macs != threshold
                or not conv._cpu_inference(x, kernel)
                or conv._current_snapshot()[1] != generation
            ):
                return None
            biases.append(conv._parameters["bias"])
        snapshots, direct, strides, paddings = args
        return snapshots, direct, biases, strides, paddings

    def _op(
        self,
        xs: list[torch.Tensor],
        weights: list[torch.Tensor],
        packed: list[torch.Tensor],
        biases: list[torch.Tensor | None],
        strides: list[int],
        paddings: list[int],
        max_direct_macs: int = -1,
    ) -> torch.Tensor:
        # max_direct_macs: below it the direct kernel (min_packed_macs when negative)
        return torch.ops.deeprebirth.small_conv2d_cat(
            xs,
            weights,
            packed,
            biases,
            strides,
            paddings,
            self.relu,
            self.min_packed_macs if max_direct_macs < 0 else max_direct_macs,
            self.max_direct_1x1_pixels,
        )


# small_conv2d's direct-kernel weight where the direct kernel is ruled out (max_macs 0)
_NO_DIRECT_WEIGHT = torch.empty(0)

# Shown once per process (Python's default filter): a deployed model's weights made under
# torch.inference_mode have no version counter, so frozen layers fall back to comparing each
# weight with its snapshot byte for byte on every call (GoogLeNet-Slim at batch 1: 7.6 ms
# instead of 4.7).
_INFERENCE_WEIGHT_WARNING = (
    "a PackedConv2d with frozen_weights has a weight made under torch.inference_mode(), which has "
    "no version counter: each call compares the weight with its packed copy byte for byte, which "
    "is slow. Build or load the deployed model outside inference_mode (run it inside)."
)


@functools.cache
def _own_onednn() -> bool:
    """Whether the operator library runs packed layers as oneDNN primitives of its own
    (``build_info()["onednn"]``): then the eager packed path calls it (``small_conv2d``) as frozen
    TorchScript does, not ATen's oneDNN op, which rebuilds the layer's primitive on every call
    (docs/kernels.md, "Per-call cost of oneDNN through ATen")."""
    return bool(deeprebirth.ops.build_info()["onednn"])


def _traced(x: torch.Tensor) -> bool:
    """Whether this call is being traced: torch.compile / torch.export trace the plain forward,
    and fx proxies and the fake tensors of a non-strict export are not plain tensors. Checked
    before any cache: tracing their reads and updates (under a lock) broke compiled graphs,
    recompiled them per layer, and fx cannot branch on a proxy's shape."""
    return torch.compiler.is_compiling() or type(x) is not torch.Tensor


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` if it is contiguous in NCHW or channels_last (what oneDNN reads), else a copy in the
    layout its strides are closest to."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.dim() == 4 and x.stride(1) == 1:  # channels of a channels_last tensor (a narrow view):
        # an NCHW copy would transpose it, and the convolution would then run and write NCHW
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def packing_problem(conv: nn.Conv2d) -> str:
    """'' when ``conv``'s settings fit :class:`PackedConv2d`, else why not (naming the setting):
    zero padding given by numbers, and settings ``conv2d`` accepts (at least one channel,
    kernel sizes, strides and dilations of at least 1, padding of at least 0)."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return (
            f"padding_mode={conv.padding_mode!r}, padding={conv.padding!r}: PackedConv2d needs "
            "padding_mode='zeros' and numeric padding"
        )
    for name, least in (
        ("in_channels", 1),
        ("out_channels", 1),
        ("kernel_size", 1),
        ("stride", 1),
        ("dilation", 1),
        ("padding", 0),
    ):
        value = getattr(conv, name)
        if any(v < least for v in (value if isinstance(value, tuple) else (value,))):
            return f"expected {name} >= {least} in every dimension, but got {name}={value}"
    return ""


def _conv_sharing_weights(cls: type[nn.Conv2d], conv: nn.Conv2d, **kwargs) -> nn.Conv2d:
    """A ``cls`` with ``conv``'s settings, weight and bias (the same Parameters) and mode."""
    new = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=False,
        padding_mode=conv.padding_mode,
        device="meta",
        **kwargs,
    )
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


#: PackedConv2d's caches: neither copied nor pickled (oneDNN's opaque tensors cannot be).
_CACHES = (
    "packed_weights",
    "_kernel_by_shape",
    "_direct_weight",
    "_weight_snapshot",
    "_last_packed",
)


def _version_key(weight: torch.Tensor) -> tuple:
    """What changes when ``weight`` is replaced or updated through autograd-visible writes."""
    version = None if weight.is_inference() else weight._version  # inference tensors have none
    return (id(weight), weight.data_ptr(), version, weight.shape, weight.dtype)


def freeze_packed_weights(model: nn.Module, frozen: bool = True) -> int:
    """Sets :attr:`PackedConv2d.frozen_weights` on every PackedConv2d in ``model``.

    For deployed inference models whose weights no longer change (or change only through
    in-place ops, unfused optimizers and ``load_state_dict``, which move the version counter):
    each call then skips comparing the weight with its packed copies' snapshot byte for byte,
    and the snapshot copy is dropped. Weights made under ``torch.inference_mode`` (a model built
    or loaded there) have no version counter and are still compared on every call, with a
    warning: build or load the model outside inference mode and run it inside.

    Args:
        model: any module; its PackedConv2d layers (shared with other models too) are changed.
        frozen: ``False`` restores the byte-for-byte check.

    Returns:
        the number of PackedConv2d layers set.

    Example:
        >>> net = nn.Sequential(PackedConv2d(3, 8, 3), nn.ReLU())
        >>> freeze_packed_weights(net)
        1
    """
    layers = [m for m in model.modules() if isinstance(m, PackedConv2d)]
    for layer in layers:
        with layer._cache_lock:
            layer.frozen_weights = frozen
            layer._drop_packed_copies()
    return len(layers)
