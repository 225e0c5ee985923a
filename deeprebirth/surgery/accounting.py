"""Parameters, multiply-accumulates and activation bytes per module, from one shape-only pass.

:func:`profile_modules` runs the model once under ``FakeTensorMode`` (shapes only, no arithmetic;
a real ``no_grad`` forward when fake tensors are not supported) with forward hooks, and returns a
:class:`ModuleStats` per qualified module name. Containers aggregate their descendants.
MACs count tensor layers only (convolutions, linear, the fused deeprebirth ops); pooling, LRN,
BatchNorm and ReLU are the "non-tensor" layers DeepRebirth removes and cost 0 MACs here, but their
outputs count as activation memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from deeprebirth.nn import BranchConv2d, ConvPool2d


@dataclass
class ModuleStats:
    """Shape-derived costs of one module at one input size.

    Attributes:
        in_shape: shape of the first positional input of its first call (None if not a tensor).
        out_shape: shape of its first output tensor.
        params: parameters it owns (with descendants for containers).
        macs: multiply-accumulates of all its calls (with descendants).
        act_bytes: bytes of the outputs of its leaf layers (with descendants).
        calls: how many times it ran.
    """

    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    params: int = 0
    macs: int = 0
    act_bytes: int = 0
    calls: int = 0


def _tensors(value: object) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one dimension (PyTorch's rule).

    Raises:
        ValueError: ``stride`` or ``dilation`` below 1, ``kernel`` or ``padding`` negative.
    """
    for name, value, least in (
        ("stride", stride, 1),
        ("dilation", dilation, 1),
        ("kernel_size", kernel, 0),
        ("padding", padding, 0),
    ):
        if value < least:
            raise ValueError(f"expected {name} >= {least}, but got {value}")
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_macs(module: nn.Module, in_shape: tuple[int, ...]) -> int:
    """MACs of one call of a 2-D convolution (``Conv2d`` or the conv of ``ConvPool2d``) on an input
    of ``in_shape`` (N, C, H, W).

    Raises:
        ValueError: the module's stride or dilation is below 1, or its padding negative.

    Example:
        >>> conv2d_macs(nn.Conv2d(3, 8, 3), (1, 3, 10, 10))
        13824
    """
    out_channels, per_group_in, kh, kw = module.weight.shape
    h = _conv_out(in_shape[2], kh, module.stride[0], module.padding[0], module.dilation[0])
    w = _conv_out(in_shape[3], kw, module.stride[1], module.padding[1], module.dilation[1])
    return in_shape[0] * out_channels * h * w * per_group_in * kh * kw


def leaf_macs(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """MACs of one call of a tensor layer; 0 for every other layer.

    Example:
        >>> leaf_macs(nn.Conv2d(3, 8, 3), (1, 3, 10, 10), (1, 8, 8, 8))
        13824
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return (
            math.prod(in_shape)
            * module.out_channels
            // module.groups
            * math.prod(module.kernel_size)
        )
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return math.prod(out_shape) * per_output
    if isinstance(module, nn.Linear):
        return math.prod(out_shape) * module.in_features
    if isinstance(module, ConvPool2d):
        return conv2d_macs(module, in_shape)
    if isinstance(module, BranchConv2d):
        spatial = in_shape[0] * out_shape[2] * out_shape[3]
        return sum(spatial * w.shape[0] * math.prod(w.shape[1:]) for w in module.weights)
    return 0


def _is_leaf(module: nn.Module) -> bool:
    return isinstance(module, (ConvPool2d, BranchConv2d)) or next(module.children(), None) is None


def _forward(model: nn.Module, example: torch.Tensor) -> None:
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
            model(mode.from_tensor(example))
    except Exception:  # an op without a fake kernel: pay for one real forward instead
        with torch.no_grad():
            model(example)


def profile_modules(model: nn.Module, example: torch.Tensor) -> dict[str, ModuleStats]:
    """Runs ``model(example)`` once (shapes only where possible) and returns stats per module name.

    The root is under ``""``. Modules that did not run keep zero MACs/activations.

    Example:
        >>> stats = profile_modules(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.zeros(1, 3, 10, 10))
        >>> stats["0"].macs, stats[""].act_bytes
        (13824, 4096)
    """
    names = {id(m): n for n, m in model.named_modules()}
    stats = {n: ModuleStats() for n in names.values()}
    leaf_macs_of: dict[str, int] = {}
    leaf_bytes_of: dict[str, int] = {}

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        name = names[id(module)]
        record = stats[name]
        record.calls += 1
        outputs = list(_tensors(output))
        if record.calls == 1:
            first_in = next(_tensors(args), None)
            record.in_shape = tuple(first_in.shape) if first_in is not None else None
            record.out_shape = tuple(outputs[0].shape) if outputs else None
        if _is_leaf(module):
            in_shape = tuple(next(_tensors(args)).shape) if args else ()
            out_shape = tuple(outputs[0].shape) if outputs else ()
            leaf_macs_of[name] = leaf_macs_of.get(name, 0) + leaf_macs(module, in_shape, out_shape)
            nbytes = sum(t.numel() * t.element_size() for t in outputs)
            leaf_bytes_of[name] = leaf_bytes_of.get(name, 0) + nbytes

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        _forward(model, example)
    finally:
        for handle in handles:
            handle.remove()
    for name, module in model.named_modules():
        stats[name].params = sum(p.numel() for p in module.parameters())
    for name in set(leaf_macs_of) | set(leaf_bytes_of):
        prefixes = [""] + [".".join(name.split(".")[: i + 1]) for i in range(name.count(".") + 1)]
        for prefix in set(prefixes):
            stats[prefix].macs += leaf_macs_of.get(name, 0)
            stats[prefix].act_bytes += leaf_bytes_of.get(name, 0)
    return stats


def module_cost(
    module: nn.Module, in_shape: tuple[int, ...] | None, dtype: torch.dtype
) -> ModuleStats:
    """Stats of a stand-alone module run on zeros of ``in_shape`` (an Identity costs nothing)."""
    params = sum(p.numel() for p in module.parameters())
    if isinstance(module, nn.Identity) or in_shape is None:
        return ModuleStats(in_shape, in_shape, params)
    if type(module) is nn.Conv2d and not isinstance(module.padding, str) and len(in_shape) == 4:
        spatial = [
            _conv_out(
                in_shape[2 + d],
                module.kernel_size[d],
                module.stride[d],
                module.padding[d],
                module.dilation[d],
            )
            for d in range(2)
        ]
        out_shape = (in_shape[0], module.out_channels, *spatial)
        nbytes = math.prod(out_shape) * torch.empty((), dtype=dtype).element_size()
        return ModuleStats(
            in_shape, out_shape, params, leaf_macs(module, in_shape, out_shape), nbytes, 1
        )
    return profile_modules(module, torch.zeros(in_shape, dtype=dtype))[""]
