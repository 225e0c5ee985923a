"""Modules that rules put into models.

No ``from __future__ import annotations`` here: TorchScript reads PackedConv2d's annotations.
"""

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

import deeprebirth.ops  # noqa: F401  (loads torch.ops.deeprebirth.direct_conv)
from deeprebirth.surgery.accounting import conv2d_macs


class ConcatBranches(nn.Module):
    """Runs each branch on the same input and concatenates the outputs along channels
    (``relu``: each branch output through ReLU first).

    The branch-slimmed form of torchvision's GoogLeNet ``Inception`` (two branches left), and the
    portable form of :class:`~deeprebirth.ops.BranchConv2d` (its convolutions, ``relu`` set).

    Shape:
        ``(N, C, H, W) -> (N, sum of branch widths, H, W)``.

    Example:
        >>> m = ConcatBranches([nn.Conv2d(4, 3, 1), nn.Conv2d(4, 5, 3, padding=1)], relu=True)
        >>> m(torch.zeros(1, 4, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(self, branches: Sequence[nn.Module], relu: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for branch in self.branches:  # a loop, not a comprehension: TorchScript compiles it
            y = branch(x)
            outputs.append(torch.relu(y) if self.relu else y)
        return torch.cat(outputs, 1)


class PackedConv2d(nn.Conv2d):
    """``Conv2d`` (optionally with its ReLU) whose CPU inference runs oneDNN on weights packed once.

    A plain CPU convolution hands oneDNN the weights in PyTorch's layout, and oneDNN reorders them
    into its blocked layout on every call: at batch 1 that copy costs about as much as the
    arithmetic of a late ResNet layer. This module keeps the packed copy (one per input shape, at
    most :attr:`max_packed_shapes` of them, rebuilt when the weight changes) and calls
    ``torch.ops.mkldnn._convolution_pointwise``, which also applies the fused ReLU (and a residual
    add, ``forward(x, residual)``) in the same pass. The result equals ``relu?(conv2d(x))``
    up to float32 rounding.

    The packed path runs only where it pays and is safe: calls of at least
    :attr:`min_packed_macs` multiply-accumulates, eval mode, no autograd needed, a plain float32
    CPU tensor, oneDNN available, and not while scripting, tracing, exporting or compiling.
    Smaller calls (ungrouped, undilated; 1x1 layers only up to :attr:`max_direct_1x1_pixels`
    output pixels) run deeprebirth's direct convolution (``torch.ops.deeprebirth.small_conv2d``,
    ReLU fused) on a weight packed once, in eager mode and in TorchScript: faster than conv2d on
    small layers, whose fixed cost per call (im2col, GEMM setup, oneDNN's weight reorder) exceeds
    their arithmetic (``scripts/bench_direct_conv.py``). Every other call (training,
    gradients, other dtypes/devices) is the ordinary ``Conv2d`` forward followed by ReLU when
    ``relu``. ``train()`` drops the packed copies. In TorchScript the direct kernel's weight is
    packed by the graph, which ``torch.jit.freeze`` folds into a constant (unfrozen, every call
    packs it), and the module needs the deeprebirth library where it is loaded
    (:func:`~deeprebirth.export.make_portable` gives a model that does not).
    Outputs of the packed path are channels_last (oneDNN's fast layout) whatever the input's
    layout, those of the direct path contiguous; values and shapes are those of ``Conv2d``.

    Weight updates: the packed copies are made from a snapshot of the weight, and a call uses them
    only when the weight is bitwise equal to that snapshot (``deeprebirth::bitwise_equal``, one
    memcmp of the weight per call); otherwise it drops them and packs the weight as it is now.
    So any update is seen, however it is made: writes through ``.data``, optimizer steps (fused
    ones do not move the version counter), ``load_state_dict``, ``copy_`` under ``no_grad``,
    ``nn.init``, NumPy views, a new tensor or Parameter. Memory per layer: the snapshot, the
    direct kernel's copy, at most :attr:`max_packed_shapes` oneDNN copies, and the kernel choice
    for at most :attr:`max_kernel_shapes` input shapes (both caches drop the least recently used
    entry first). The caches are guarded by a lock: threads may share a layer.

    Args:
        *args, **kwargs: as for ``nn.Conv2d`` (``padding_mode="zeros"``, numeric padding).
        relu: apply ReLU to the output (fused into the convolution on the packed path).

    Raises:
        ValueError: settings it cannot run or ``conv2d`` rejects (a stride, dilation or kernel
            size below 1, negative padding, no channels, other padding modes); the message names
            the setting (:func:`packing_problem`).

    Shape:
        as ``nn.Conv2d``.

    Example:
        >>> conv = PackedConv2d(3, 8, 3, padding=1, relu=True).eval()
        >>> x = torch.randn(1, 3, 16, 16)
        >>> with torch.no_grad():
        ...     torch.allclose(conv(x), torch.relu(conv._conv_forward(x, conv.weight, conv.bias)),
        ...                    atol=1e-5)
        True
    """

    __jit_ignored_attributes__ = [
        "packed_weights",
        "_kernel_by_shape",
        "_direct_weight",
        "_weight_snapshot",
        "_cache_lock",
    ]
    # read by _takes_direct_kernel in TorchScript
    __constants__ = [*nn.Conv2d.__constants__, "min_packed_macs", "max_direct_1x1_pixels"]
    #: Calls with fewer multiply-accumulates run the plain convolution: oneDNN's fixed cost per
    #: call (tens of microseconds here) exceeds what packing saves on tiny layers. A
    #: Fashion-MNIST-size GoogLeNet (all layers < 1M MACs) ran 1.7x slower packed, ResNet-50's
    #: layers (>= 12M MACs at 224x224) 1.4x faster. Set it on an instance or the class.
    min_packed_macs: int = 1 << 22
    #: 1x1 calls with more output pixels per image than this run conv2d: a GEMM over the pixels
    #: beats the direct kernel there (1.5-2x at 14x14 and larger), which wins up to 8x8 (1.1-1.6x).
    max_direct_1x1_pixels: int = 64
    #: oneDNN copies kept per layer, one per input shape (the most recently used ones).
    max_packed_shapes: int = 2
    #: Input shapes whose kernel choice a layer keeps (the most recently used ones).
    max_kernel_shapes: int = 64

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
        self._weight_snapshot: tuple = (None, 0)  # (the weight's values packed, generation)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, relu: bool = False) -> "PackedConv2d":
        """A PackedConv2d sharing ``conv``'s weight and bias (exact; ``relu`` fuses a ReLU).

        Raises:
            ValueError: ``conv`` uses a padding mode other than zeros or string padding.
        """
        return _conv_sharing_weights(cls, conv, relu=relu)

    def to_standard(self) -> nn.Module:
        """The plain ``Conv2d`` (``-> ReLU`` when fused) it computes, sharing its weights."""
        conv = _conv_sharing_weights(nn.Conv2d, self)
        return nn.Sequential(conv, nn.ReLU()) if self.relu else conv

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")

    def train(self, mode: bool = True) -> "PackedConv2d":
        if mode:  # the weights are about to change: free the packed copies
            with self._cache_lock:
                self.packed_weights = OrderedDict()
                self._direct_weight = ()
                self._weight_snapshot = (None, self._weight_snapshot[1] + 1)
        return super().train(mode)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # oneDNN's opaque tensors can be neither copied nor pickled, nor can a lock
        for name in ("packed_weights", "_kernel_by_shape", "_direct_weight", "_weight_snapshot"):
            state.pop(name, None)
        state.pop("_cache_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        for name in ("packed_weights", "_kernel_by_shape", "_direct_weight", "_weight_snapshot"):
            state.pop(name, None)  # files saved before the caches took their present form
        super().__setstate__(state)
        self._init_caches()

    def macs(self, input_shape: Sequence[int]) -> int:
        """Multiply-accumulates of one call on an input of ``input_shape`` (N, C, H, W)."""
        return conv2d_macs(self, tuple(input_shape))

    @torch.jit.unused
    def _inference_kernel(self, x: torch.Tensor) -> str:
        """ "packed" (oneDNN, packed weights), "small" (``deeprebirth::small_conv2d``) or "" (the
        plain ``Conv2d`` forward) for a call on ``x``. Runs on every call of layers that may take
        microseconds: the shape-dependent choice is cached per shape, and the per-call checks run
        only when it is not the plain forward."""
        if type(x) is not torch.Tensor:  # fx proxies, fake tensors of torch.export / compile
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
        if not kernel:
            return ""
        weight = self._parameters["weight"]
        cpu_inference = (
            not self.training
            and x.is_cpu
            and x.dtype == torch.float32
            and weight.is_cpu
            and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and not torch.is_autocast_enabled("cpu")
            and (kernel != "packed" or torch.backends.mkldnn.enabled)
        )
        return kernel if cpu_inference else ""

    @torch.jit.unused
    def _kernel_for_shape(self, shape: torch.Size) -> str:
        if len(shape) != 4 or shape.numel() == 0:
            return ""
        if self.macs(shape) >= self.min_packed_macs:
            return "packed" if torch.backends.mkldnn.is_available() else ""
        return "small" if self.groups == 1 and self.dilation == (1, 1) else ""

    @torch.jit.unused
    def _packed_path_applies(self, x: torch.Tensor) -> bool:
        return self._inference_kernel(x) == "packed"

    @torch.jit.unused
    def _current_snapshot(self) -> tuple:
        """``(snapshot, generation)``: a copy of the weight's present values, and the number that
        names the packed copies made from it (a new snapshot and number when the weight changed,
        its stale copies dropped)."""
        weight = self._parameters["weight"]
        current = self._weight_snapshot
        if current[0] is not None and torch.ops.deeprebirth.bitwise_equal(weight, current[0]):
            return current
        with self._cache_lock:  # another thread may have taken the new snapshot meanwhile
            current = self._weight_snapshot
            if current[0] is None or not torch.ops.deeprebirth.bitwise_equal(weight, current[0]):
                current = (weight.detach().clone(), current[1] + 1)
                self.packed_weights = OrderedDict()
                self._direct_weight = ()
                self._weight_snapshot = current
            return current

    @torch.jit.unused
    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """oneDNN's packed copy of the weight for inputs shaped like ``x`` (made on first use)."""
        snapshot, generation = self._current_snapshot()
        key = (tuple(x.shape), generation)
        with self._cache_lock:
            weight = self.packed_weights.get(key)
            if weight is not None:
                self.packed_weights.move_to_end(key)
                return weight
            # At most max_packed_shapes input shapes: each packed copy is as large as the weight,
            # and a server sees many batch sizes.
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
            return weight

    @torch.jit.unused
    def _onednn_args(self, x: torch.Tensor) -> tuple:
        """``(x, packed weight, bias, padding, stride, dilation, groups)`` for the
        ``mkldnn::_convolution_pointwise`` ops, ``x`` made dense for oneDNN."""
        x = _dense(x)
        bias = None if self.bias is None else self.bias.detach()
        geometry = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
        return (x, self._packed_weight(x), bias, *geometry)

    @torch.jit.unused
    def _packed_forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        x, *conv = self._onednn_args(x)
        if residual is not None and self.relu:  # relu(conv(x) + residual) in one oneDNN call
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, *conv, "add", 1.0, "relu", [], ""
            )
        attr = "relu" if self.relu and residual is None else "none"
        y = torch.ops.mkldnn._convolution_pointwise(x, *conv, attr, [], "")
        return y if residual is None else y + residual

    @torch.jit.unused
    def _small_forward(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        # Parameters read from _parameters: nn.Module.__getattr__ costs about 1 us per read,
        # which adds up on small models whose layers take a few microseconds.
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        return self._small_conv2d(x, weight, self._direct_packed_weight(), bias, relu)

    @torch.jit.unused
    def _direct_packed_weight(self) -> torch.Tensor:
        """``direct_conv_pack(weight)``, kept while the weight's values stay."""
        snapshot, generation = self._current_snapshot()
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
    ) -> torch.Tensor:
        # deeprebirth::small_conv2d: the direct kernel where it pays, conv2d otherwise.
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
            self.min_packed_macs,
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

    @torch.jit.unused
    def add_into_(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``relu?(conv(x) + residual)`` written over ``residual``, which it returns.

        For a residual that nothing reads afterwards (a block's fresh shortcut output): on the
        packed path with a channels_last ``residual`` oneDNN accumulates into it as it writes
        (its "sum" post-op), which measured 1.5x faster than ``forward(x, residual)`` on
        ResNet-50's 64->256 1x1 layers at batch 8 (2 threads) and needs no second output tensor.
        Elsewhere it is ``residual.add_(conv(x))`` (then ``relu_``). Not for TorchScript.
        """
        if self._packed_path_applies(x):
            unary = "relu" if self.relu else None
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                residual, *self._onednn_args(x), "add", 1.0, unary, [], ""
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
        kernel = self._inference_kernel(x)
        if kernel == "packed":
            return self._packed_forward(x, residual)
        if kernel == "small":
            if residual is None:
                return self._small_forward(x, self.relu)
            y = self._small_forward(x, False)
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
        self.__prepare_scriptable__()

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
        """The ``ConvConcat`` of the layers' standard forms (sharing their weights)."""
        return ConvConcat([conv.to_standard() for conv in self.convs])

    @torch.jit.unused
    def _op_arguments(self) -> tuple[list, list, list, list, list]:
        """The layers' weights, packed weights, biases, strides and paddings as
        ``small_conv2d_cat`` takes them (the packed weights current)."""
        convs = list(self.convs)
        return (
            [conv.weight for conv in convs],
            [conv._direct_packed_weight() for conv in convs],
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
        convs = list(self.convs)
        if len(xs) != len(convs) or any(
            conv._inference_kernel(x) != "small" for conv, x in zip(convs, xs, strict=True)
        ):
            return torch.cat([conv(x) for conv, x in zip(convs, xs, strict=True)], 1)
        return self._op(xs, *self._op_arguments())

    def _op(
        self,
        xs: list[torch.Tensor],
        weights: list[torch.Tensor],
        packed: list[torch.Tensor],
        biases: list[torch.Tensor | None],
        strides: list[int],
        paddings: list[int],
    ) -> torch.Tensor:
        return torch.ops.deeprebirth.small_conv2d_cat(
            xs,
            weights,
            packed,
            biases,
            strides,
            paddings,
            self.relu,
            self.min_packed_macs,
            self.max_direct_1x1_pixels,
        )


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` if it is contiguous in NCHW or channels_last (what oneDNN reads), else a copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
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


class PackedResidualBlock(nn.Module):
    """A ResNet block after BatchNorm folding, every ReLU and the residual add fused into its
    packed convolutions: ``relu(last(body(x)) + shortcut(x))`` where ``body`` ends in a ReLU.

    Built by the ``pack_conv`` rule from torchvision's ``BasicBlock`` / ``Bottleneck`` (whose one
    shared ReLU module a per-layer rewrite cannot remove). Exact up to float32 rounding.

    Args:
        convs: the block's convolutions in order (conv1, conv2[, conv3]), BatchNorms folded in.
        shortcut: the 1x1 downsample convolution, or None for the identity shortcut.

    Example:
        >>> block = PackedResidualBlock([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])
        >>> block(torch.randn(1, 8, 6, 6)).shape
        torch.Size([1, 8, 6, 6])
    """

    def __init__(self, convs: Sequence[nn.Conv2d], shortcut: nn.Conv2d | None = None) -> None:
        super().__init__()
        *body, last = convs
        self.body = nn.Sequential(*(PackedConv2d.from_conv(c, relu=True) for c in body))
        self.last = PackedConv2d.from_conv(last, relu=True)
        self.shortcut = nn.Identity() if shortcut is None else PackedConv2d.from_conv(shortcut)

    def forward(self, x: torch.Tensor, x_is_scratch: bool = False) -> torch.Tensor:
        """The block's output. ``x_is_scratch``: nothing reads ``x`` after this call, so the output
        may be written over it (set by :class:`PackedResidualStage` for the blocks it feeds)."""
        y = self.body(x)
        if not torch.jit.is_scripting():
            return self._add_shortcut(x, y, x_is_scratch)
        return self.last(y, self.shortcut(x))

    @torch.jit.unused
    def _add_shortcut(self, x: torch.Tensor, y: torch.Tensor, x_is_scratch: bool) -> torch.Tensor:
        # A downsample's output is fresh; an identity shortcut's is x itself. On the packed path
        # the last convolution then accumulates into that tensor instead of writing a new one.
        fresh_shortcut = not isinstance(self.shortcut, nn.Identity)
        if (fresh_shortcut or x_is_scratch) and self.last._packed_path_applies(y):
            return self.last.add_into_(y, self.shortcut(x))
        return self.last(y, self.shortcut(x))

    def to_standard(self) -> "ResidualBlock":
        """The same block of plain layers (sharing the weights)."""
        body = [layer for packed in self.body for layer in _as_layers(packed.to_standard())]
        shortcut = self.shortcut
        if isinstance(shortcut, PackedConv2d):
            shortcut = shortcut.to_standard()
        return ResidualBlock(
            nn.Sequential(*body), _conv_sharing_weights(nn.Conv2d, self.last), shortcut
        )


class PackedResidualStage(nn.Sequential):
    """A run of :class:`PackedResidualBlock` (a ResNet stage such as torchvision's ``layer1``) in
    which every block after the first writes its output over its input.

    Those inputs are outputs of the stage's own blocks that nothing else reads, so no block past
    the first allocates an output, and each last convolution accumulates into the residual as it
    writes (see :meth:`PackedConv2d.add_into_`). A block with forward hooks (on it or one of its
    layers, which may keep the output) turns the reuse off for its successor; the stage's input
    is never written. Exact, as its blocks are; ``to_standard()`` gives the plain ``nn.Sequential``
    of ``ResidualBlock``.

    Example:
        >>> stage = PackedResidualStage(
        ...     *(PackedResidualBlock([nn.Conv2d(8, 8, 3, padding=1)] * 2) for _ in range(2))
        ... )
        >>> stage(torch.randn(1, 8, 6, 6)).shape
        torch.Size([1, 8, 6, 6])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_is_scratch = False
        for block in self:  # a loop over the blocks: TorchScript unrolls it
            x = block(x, x_is_scratch)
            if not torch.jit.is_scripting():
                x_is_scratch = self._output_is_private(block)
        return x

    @torch.jit.unused
    def _output_is_private(self, block: nn.Module) -> bool:
        if nn.modules.module._global_forward_hooks:
            return False
        return not any(module._forward_hooks for module in block.modules())

    def to_standard(self) -> nn.Sequential:
        """The same stage of plain layers (``ResidualBlock``), sharing the weights."""
        return nn.Sequential(*(block.to_standard() for block in self))


class ResidualBlock(nn.Module):
    """``relu(last(body(x)) + shortcut(x))`` with standard layers: the portable form of
    :class:`PackedResidualBlock`.

    Example:
        >>> block = ResidualBlock(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), nn.Conv2d(4, 4, 1))
        >>> block(torch.randn(1, 4, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
    """

    def __init__(self, body: nn.Module, last: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body, self.last = body, last
        self.shortcut = nn.Identity() if shortcut is None else shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.last(self.body(x)) + self.shortcut(x))


def _as_layers(module: nn.Module) -> list[nn.Module]:
    return list(module) if isinstance(module, nn.Sequential) else [module]
