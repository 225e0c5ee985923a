"""Portable models: deeprebirth's modules replaced by the standard layers they compute.

A portable model needs no deeprebirth library when loaded (stock LibTorch, ONNX Runtime,
ExecuTorch, OpenVINO). :func:`make_portable` asks each module for its standard form: every
module of :mod:`deeprebirth.nn` that runs a deeprebirth operator or packed weights defines
``to_standard()``, which returns the exactly equivalent standard layers (for instance
:class:`~deeprebirth.nn.ConvPool2d` becomes ``Conv2d -> [ReLU] -> MaxPool2d |
AvgPool2d(count_include_pad=True)``, the same sequence as ``deeprebirth.ops._reference``).

The portable graph holds the model's layers and nothing else. Where a merged BranchConv2d is read
only through ``narrow`` views of whole branches (what ``merge_branches`` writes), each view
becomes its branch's own convolution, so no ``cat`` is sliced again and no in-place operation
reads a view (``torch.export`` would write it back with ``slice_scatter``); a ReLU repeated on a
branch the operator already rectified is dropped (ReLU is idempotent). ``nn.LocalResponseNorm``
becomes :class:`~deeprebirth.nn.LocalResponseNorm2d`, the same sum over channels as an
``avg_pool2d`` (PyTorch's own form is an ``avg_pool3d``, which ExecuTorch has no kernel for) that
XNNPACK takes whole: a rewrite of a standard layer, so it is made here rather than by a
``to_standard()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from deeprebirth.nn import BranchConv2d, ConcatBranches, ConvPool2d
from deeprebirth.nn.lrn import (  # noqa: F401  (local_response_norm_2d: its former home)
    LocalResponseNorm2d,
    local_response_norm_2d,
)
from deeprebirth.ops import _reference


def conv_pool_as_standard(fused: ConvPool2d) -> nn.Sequential:
    """``fused.to_standard()``: the ``Conv2d -> [ReLU] -> pool`` sequence equal to ``fused``.

    Example:
        >>> fused = ConvPool2d(3, 8, 3, padding=1, pool_kernel=2)
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.allclose(conv_pool_as_standard(fused)(x), fused(x), atol=1e-6)
        True
    """
    return fused.to_standard()


def branch_conv_as_standard(merged: BranchConv2d) -> ConcatBranches:
    """``merged.to_standard()``: the ``cat`` of standard convolutions equal to ``merged``."""
    return merged.to_standard()


def _has_standard_form(module: nn.Module) -> bool:
    """Whether ``module`` defines ``to_standard()``: it runs something other than standard layers
    (a deeprebirth operator, packed weights) and can be replaced by standard layers."""
    # Looked up on the class: nn.Module.__getattr__ would also find a submodule of that name.
    return callable(getattr(type(module), "to_standard", None))


def deeprebirth_op_decompositions() -> dict[torch._ops.OpOverload, Callable[..., torch.Tensor]]:
    """``ExportedProgram.run_decompositions`` table that replaces each ``torch.ops.deeprebirth``
    operator with a weight-only form by the standard operators it computes (its reference
    composition, ``deeprebirth.ops._reference``): for models that call the operators directly,
    where :func:`make_portable` finds no module to replace. ``direct_conv``, ``direct_conv_cat``
    and ``winograd_conv2d`` read only a packed weight, and ``small_conv2d_add_`` and
    ``onednn_conv2d_add_`` write into their residual: they have no entry.
    """
    ops = torch.ops.deeprebirth

    def onednn_conv2d(x, w, b, stride, padding, dilation, groups, relu):
        y = F.conv2d(x, w, b, stride, padding, dilation, groups)
        return F.relu(y) if relu else y

    def small_conv2d(x, w, packed_w, b, stride, padding, dilation, groups, relu, *_kernel_choice):
        return onednn_conv2d(x, w, b, stride, padding, dilation, groups, relu)

    def small_conv2d_cat(xs, ws, packed_ws, bs, strides, paddings, relu, *_kernel_choice):
        outputs = []
        for i, (x, w, b) in enumerate(zip(xs, ws, bs, strict=True)):
            pair = slice(2 * i, 2 * i + 2)
            outputs.append(onednn_conv2d(x, w, b, strides[pair], paddings[pair], 1, 1, relu))
        return torch.cat(outputs, 1)

    def max_pool2d(x, kernel_size, stride, padding, ceil_mode):
        return F.max_pool2d(x, kernel_size, stride, padding, 1, ceil_mode)

    return {
        ops.conv_pool.default: _reference.conv_pool_reference,
        ops.branch_conv.default: _reference.branch_conv_reference,
        ops.small_conv2d.default: small_conv2d,
        ops.small_conv2d_cat.default: small_conv2d_cat,
        ops.onednn_conv2d.default: onednn_conv2d,
        ops.max_pool2d.default: max_pool2d,
        ops.linear.default: F.linear,
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
    """Whether ``model`` contains a module with a standard form (``to_standard()``): one that
    calls a ``torch.ops.deeprebirth`` operator or keeps packed weights."""
    return any(_has_standard_form(m) for m in model.modules())


def make_portable(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every module that has a standard form (``to_standard()``)
    replaced by it, branch views of merged convolutions by the branches themselves and every
    ``nn.LocalResponseNorm`` by :class:`LocalResponseNorm2d` (see the module docstring).

    Args:
        model: any module; it is not modified.

    Returns:
        the copy, free of deeprebirth operators; a copy of ``model`` when there is nothing to
        replace.

    Example:
        >>> net = nn.Sequential(ConvPool2d(3, 4, 3, pool_kernel=2)).eval()
        >>> uses_deeprebirth_ops(make_portable(net))
        False
    """
    portable = copy.deepcopy(model)
    for module in list(portable.modules()):
        if isinstance(module, fx.GraphModule):
            _split_branch_views(module)
    portable = _standard_form(portable)
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


def _standard_form(module: nn.Module) -> nn.Module:
    """``module`` with its own ``to_standard()`` applied until none is left (a standard form
    may itself hold modules with one: those are replaced by :func:`_replace_in_place`)."""
    if type(module) is nn.LocalResponseNorm:
        return LocalResponseNorm2d.from_module(module)
    while _has_standard_form(module):
        standard = module.to_standard()
        if standard is module:
            raise TypeError(f"{type(module).__name__}.to_standard() returned the module itself")
        module = standard
    return module


def _replace_in_place(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        standard = _standard_form(child)
        if standard is not child:
            setattr(module, name, standard)
        _replace_in_place(standard)
