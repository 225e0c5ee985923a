"""Portable models: deeprebirth's fused modules replaced by the standard layers they compute.

A portable model needs no deeprebirth library when loaded (stock LibTorch, ONNX Runtime,
ExecuTorch, OpenVINO). The replacement is exact: :class:`~deeprebirth.ops.ConvPool2d` becomes
``Conv2d -> [ReLU] -> MaxPool2d | AvgPool2d(count_include_pad=True)`` and
:class:`~deeprebirth.ops.BranchConv2d` becomes its :attr:`~deeprebirth.ops.BranchConv2d.branches`
(``Conv2d`` each) -> [ReLU] -> ``cat``, the same sequences as ``deeprebirth.ops._reference``.

The portable graph holds the model's layers and nothing else. Where a merged BranchConv2d is read
only through ``narrow`` views of whole branches (what ``merge_branches`` writes), each view
becomes its branch's own convolution, so no ``cat`` is sliced again and no in-place operation
reads a view (``torch.export`` would write it back with ``slice_scatter``); a ReLU repeated on a
branch the operator already rectified is dropped (ReLU is idempotent). ``nn.LocalResponseNorm``
becomes :class:`LocalResponseNorm2d`, the same sum over channels as an ``avg_pool2d`` (PyTorch's
own form is an ``avg_pool3d``, which ExecuTorch has no kernel for) that XNNPACK takes whole.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from deeprebirth.ops import BranchConv2d, ConvPool2d, _reference
from deeprebirth.surgery.modules import (
    ConcatBranches,
    PackedConv2d,
    PackedConvConcat,
    PackedResidualBlock,
    PackedResidualStage,
)


def conv_pool_as_standard(fused: ConvPool2d) -> nn.Sequential:
    """The ``Conv2d -> [ReLU] -> pool`` sequence equal to ``fused`` (weights copied).

    Example:
        >>> fused = ConvPool2d(3, 8, 3, padding=1, pool_kernel=2)
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.allclose(conv_pool_as_standard(fused)(x), fused(x), atol=1e-6)
        True
    """
    weight = fused.weight
    conv = nn.Conv2d(
        fused.in_channels,
        fused.out_channels,
        tuple(weight.shape[2:]),
        stride=tuple(fused.stride),
        padding=tuple(fused.padding),
        dilation=tuple(fused.dilation),
        groups=fused.groups,
        bias=fused.bias is not None,
    ).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if fused.bias is not None:
            conv.bias.copy_(fused.bias)
    pool_args = (tuple(fused.pool_kernel), tuple(fused.pool_stride), tuple(fused.pool_padding))
    if fused.pool == "max":
        pool: nn.Module = nn.MaxPool2d(*pool_args, ceil_mode=fused.ceil_mode)
    else:
        pool = nn.AvgPool2d(*pool_args, ceil_mode=fused.ceil_mode, count_include_pad=True)
    layers: list[nn.Module] = [conv] + ([nn.ReLU()] if fused.relu else []) + [pool]
    return nn.Sequential(*layers)


def branch_conv_as_standard(merged: BranchConv2d) -> ConcatBranches:
    """The ``cat`` of standard convolutions equal to ``merged`` (its :attr:`branches`)."""
    return ConcatBranches(merged.branches, merged.relu)


def local_response_norm_2d(
    x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> torch.Tensor:
    """``F.local_response_norm`` of an ``(N, C, H, W)`` batch through ``avg_pool2d``.

    ``x / (k + alpha * mean of x**2 over the size channels around each, zero-padded) ** beta``:
    the squares are viewed as one ``(C, H * W)`` plane per image, zero-padded and averaged over
    a ``(size, 1)`` window, where PyTorch pads and pools a 5-D view with ``avg_pool3d``. Same
    window, padding and divisor. The pooling pads nothing itself (XNNPACK takes no
    ``count_include_pad``), and ``beta`` 0.5 / 0.75 / 1 are square roots and products (XNNPACK
    takes ``pow`` only for the exponent 2), so every runtime runs the whole rewrite.

    Raises:
        ValueError: ``x`` is not 4-D.

    Example:
        >>> x = torch.randn(2, 7, 5, 5)
        >>> ref = F.local_response_norm(x, 5, 1e-4, 0.75, 1.0)
        >>> torch.allclose(local_response_norm_2d(x, 5), ref, rtol=1e-6, atol=0)
        True
    """
    if x.dim() != 4:
        raise ValueError(f"expected x of shape (N, C, H, W), but got {tuple(x.shape)}")
    channels, height, width = x.shape[1:]
    # -1 for the batch: the reshape needs no runtime shape (no Shape node in ONNX).
    squares = (x * x).reshape(-1, 1, channels, height * width)
    padded = F.pad(squares, (0, 0, size // 2, (size - 1) // 2))
    mean = F.avg_pool2d(padded, (size, 1), stride=1, count_include_pad=False)
    base = mean.reshape(-1, channels, height, width).mul(alpha).add(k)
    if beta == 1.0:
        return x / base
    if beta == 0.5:
        return x / base.sqrt()
    if beta == 0.75:
        root = base.sqrt()
        return x / (root * root.sqrt())
    return x / base.pow(beta)


class LocalResponseNorm2d(nn.Module):
    """``nn.LocalResponseNorm`` computed by :func:`local_response_norm_2d` on 4-D inputs (the
    portable form that every runtime runs); other ranks use ``F.local_response_norm``.

    Example:
        >>> lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
        >>> x = torch.randn(1, 9, 4, 4)
        >>> torch.allclose(LocalResponseNorm2d.from_module(lrn)(x), lrn(x), rtol=1e-6, atol=0)
        True
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    @classmethod
    def from_module(cls, lrn: nn.LocalResponseNorm) -> LocalResponseNorm2d:
        """The rewrite of ``lrn`` (same size, alpha, beta, k)."""
        return cls(lrn.size, lrn.alpha, lrn.beta, lrn.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        return local_response_norm_2d(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


def deeprebirth_op_decompositions() -> dict[torch._ops.OpOverload, Callable[..., torch.Tensor]]:
    """``ExportedProgram.run_decompositions`` table that replaces each ``torch.ops.deeprebirth``
    operator with a weight-only form by the standard operators it computes (its reference
    composition, ``deeprebirth.ops._reference``): for models that call the operators directly,
    where :func:`make_portable` finds no module to replace. ``direct_conv`` and
    ``direct_conv_cat`` read only the packed weight and have no entry.
    """
    ops = torch.ops.deeprebirth

    def small_conv2d(x, w, packed_w, b, stride, padding, dilation, groups, relu, *_kernel_choice):
        y = F.conv2d(x, w, b, stride, padding, dilation, groups)
        return F.relu(y) if relu else y

    def small_conv2d_cat(xs, ws, packed_ws, bs, strides, paddings, relu, *_kernel_choice):
        outputs = []
        for i, (x, w, b) in enumerate(zip(xs, ws, bs, strict=True)):
            y = F.conv2d(x, w, b, strides[2 * i : 2 * i + 2], paddings[2 * i : 2 * i + 2])
            outputs.append(F.relu(y) if relu else y)
        return torch.cat(outputs, 1)

    return {
        ops.conv_pool.default: _reference.conv_pool_reference,
        ops.branch_conv.default: _reference.branch_conv_reference,
        ops.small_conv2d.default: small_conv2d,
        ops.small_conv2d_cat.default: small_conv2d_cat,
    }


def decompose_deeprebirth_ops(
    program: torch.export.ExportedProgram,
) -> torch.export.ExportedProgram:
    """``program`` with every ``torch.ops.deeprebirth`` call replaced by its standard operators
    (:func:`deeprebirth_op_decompositions`); ``program`` itself when it holds none."""
    if not any(
        node.op == "call_function" and getattr(node.target, "namespace", "") == "deeprebirth"
        for node in program.graph.nodes
    ):
        return program
    return program.run_decompositions(deeprebirth_op_decompositions())


def uses_deeprebirth_ops(model: nn.Module) -> bool:
    """Whether ``model`` contains a module that calls a ``torch.ops.deeprebirth`` operator
    (PackedConv2d does in TorchScript, for its small calls)."""
    return any(isinstance(m, (ConvPool2d, BranchConv2d, PackedConv2d)) for m in model.modules())


def make_portable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ConvPool2d / BranchConv2d (and PackedConv2d /
    PackedConvConcat / PackedResidualBlock / PackedResidualStage, CPU runtime details) replaced by
    standard layers, branch views of merged convolutions by the branches themselves and every
    ``nn.LocalResponseNorm`` by :class:`LocalResponseNorm2d` (see the module docstring).

    The input model is not modified; a model without deeprebirth modules is returned as a copy.

    Example:
        >>> net = nn.Sequential(ConvPool2d(3, 4, 3, pool_kernel=2)).eval()
        >>> uses_deeprebirth_ops(make_portable(net))
        False
    """
    portable = copy.deepcopy(model)
    for module in list(portable.modules()):
        if isinstance(module, fx.GraphModule):
            _split_branch_views(module)
    _replace_in_place(portable)
    return portable


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in (torch.relu, torch.relu_, F.relu)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _narrowed_channels(node: fx.Node, source: fx.Node) -> tuple[int, int] | None:
    """``(start, length)`` when ``node`` is ``narrow(source, 1, start, length)``, else None."""
    if node.kwargs:
        return None
    if node.op == "call_function" and node.target is torch.narrow:
        args = node.args
    elif node.op == "call_method" and node.target == "narrow":
        args = node.args
    else:
        return None
    if len(args) != 4 or args[0] is not source or args[1] != 1:
        return None
    start, length = args[2], args[3]
    return (start, length) if isinstance(start, int) and isinstance(length, int) else None


def _branch_names(target: str, count: int, gm: fx.GraphModule) -> list[str]:
    """Names for a merged module's branches: the convolutions' own names where merge_branches
    wrote them into ``target`` (``merged_<a>__<b>``) and they are free, else ``<target>_<i>``."""
    parent, _, name = target.rpartition(".")
    prefix = f"{parent}." if parent else ""
    names = name[len("merged_") :].split("__") if name.startswith("merged_") else []
    taken = dict(gm.named_modules())
    if len(names) != count or any(f"{prefix}{n}" in taken or not n for n in names):
        names = [f"{name}_{i}" for i in range(count)]
    return [f"{prefix}{n}" for n in names]


def _split_branch_views(gm: fx.GraphModule) -> None:
    """In ``gm``, each BranchConv2d whose output is read only through ``narrow`` views of whole
    branches becomes one ``Conv2d [-> relu]`` per view; ReLUs repeated on a rectified branch go."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), BranchConv2d):
            continue
        merged: BranchConv2d = gm.get_submodule(node.target)
        branch_of: dict[tuple[int, int], int] = {}  # (first channel, width) -> branch
        start = 0
        for i, width in enumerate(merged.out_channels):
            branch_of[start, width] = i
            start += width
        views = list(node.users)
        if not views or any(branch_of.get(_narrowed_channels(v, node)) is None for v in views):
            continue
        names = _branch_names(node.target, len(branch_of), gm)
        for name, conv in zip(names, merged.branches, strict=True):
            gm.add_submodule(name, conv)
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        outputs: dict[int, fx.Node] = {}  # branch -> its output node (a view read twice: once)
        for view in sorted(views, key=order.__getitem__):
            index = branch_of[_narrowed_channels(view, node)]
            if index not in outputs:
                with gm.graph.inserting_before(view):
                    branch = gm.graph.call_module(names[index], node.args, node.kwargs)
                    if merged.relu:
                        branch = gm.graph.call_function(torch.relu, (branch,))
                outputs[index] = branch
            view.replace_all_uses_with(outputs[index])
            gm.graph.erase_node(view)
        for branch in outputs.values() if merged.relu else ():
            for user in [u for u in branch.users if _is_relu(gm, u) and u.args == (branch,)]:
                user.replace_all_uses_with(branch)
                gm.graph.erase_node(user)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()


def _replace_in_place(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if type(child) is nn.LocalResponseNorm:
            setattr(module, name, LocalResponseNorm2d.from_module(child))
        elif isinstance(child, ConvPool2d):
            setattr(module, name, conv_pool_as_standard(child))
        elif isinstance(child, BranchConv2d):
            setattr(module, name, branch_conv_as_standard(child))
        elif isinstance(
            child, (PackedConv2d, PackedConvConcat, PackedResidualBlock, PackedResidualStage)
        ):
            setattr(module, name, child.to_standard())
        else:
            _replace_in_place(child)
