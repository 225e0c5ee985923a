"""Rewrite of ``ceil_mode`` max-pools into floor-mode ones, for the ``x86_inductor`` backend.

torch 2.13's inductor lowers ``dequantize -> max_pool2d -> quantize`` to an int8 max-pool that
computes the *floor* output size even for ``ceil_mode=True``: a wrong shape (an error further
on) or, where the shapes happen to fit, wrong values without an error. bvlc_googlenet's pools
are all ``ceil_mode``, as in Caffe. The rewrite leaves no ``ceil_mode`` pool in the graph:

- pattern: ``aten.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=True)`` with a
  static height and width;
- where floor and ceil rounding give the same output size, the windows are the same:
  ``ceil_mode`` is set to False (the pool stays int8);
- elsewhere, the input is padded on the bottom / right with ``-inf`` up to the last window
  (``aten.constant_pad_nd``) and the pool rounds down: each window holds the same input
  values (a ``ceil_mode`` window is clipped to the input, and ``-inf`` never wins a max).
  Padding is not an int8 operator, so this pool runs in float between int8 layers.

Everything else is untouched; the result equals the original on every input.
"""

from __future__ import annotations

import math

import torch
from torch import fx

_MAX_POOL = torch.ops.aten.max_pool2d.default
_DEFAULTS = {"stride": [], "padding": [0, 0], "dilation": [1, 1], "ceil_mode": False}


def _pair(value: int | list[int] | tuple[int, ...], fallback: list[int]) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    value = list(value) or fallback
    return value * 2 if len(value) == 1 else value


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool):
    """Output length of a max-pool along one axis, PyTorch's rule (a ``ceil_mode`` window must
    start inside the input or its left padding).

    Example:
        >>> pool_output_size(4, 3, 2, 0, 1, ceil=True), pool_output_size(4, 3, 2, 0, 1, ceil=False)
        (2, 1)
    """
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _arguments(node: fx.Node) -> list:
    """``[x, kernel, stride, padding, dilation, ceil_mode]`` of a max_pool2d node."""
    names = ("stride", "padding", "dilation", "ceil_mode")
    args = list(node.args) + [
        node.kwargs.get(name, _DEFAULTS[name]) for name in names[len(node.args) - 2 :]
    ]
    kernel = _pair(args[1], [])
    args[1], args[2] = kernel, _pair(args[2], kernel)
    args[3], args[4] = _pair(args[3], [0, 0]), _pair(args[4], [1, 1])
    return args


def remove_ceil_mode_pools(graph_module: fx.GraphModule) -> int:
    """Rewrites every ``ceil_mode`` max-pool of ``graph_module`` (an exported graph, before
    quantization) as the module docstring says; returns how many pools it rewrote.

    Pools whose input height or width is not static are left as they are.
    """
    changed = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target is not _MAX_POOL:
            continue
        x, kernel, stride, padding, dilation, ceil = _arguments(node)
        value = x.meta.get("val") if isinstance(x, fx.Node) else None
        if not ceil or value is None or not all(isinstance(s, int) for s in value.shape[-2:]):
            continue
        extra = []
        for axis in (0, 1):
            size = value.shape[-2 + axis]
            rule = (kernel[axis], stride[axis], padding[axis], dilation[axis])
            out = pool_output_size(size, *rule, ceil=True)
            floor = pool_output_size(size, *rule, ceil=False)
            reach = (out - 1) * stride[axis] + dilation[axis] * (kernel[axis] - 1) + 1
            extra.append(0 if out == floor else reach - size - 2 * padding[axis])
        if any(extra):
            with graph_module.graph.inserting_before(node):
                pad = graph_module.graph.call_function(
                    torch.ops.aten.constant_pad_nd.default,
                    (x, [0, extra[1], 0, extra[0]], -math.inf),
                )
            pad.meta = {k: v for k, v in node.meta.items() if k != "val"}
            pad.meta["val"] = torch.ops.aten.constant_pad_nd(value, [0, extra[1], 0, extra[0]])
            x = pad
        node.args, node.kwargs = (x, kernel, stride, padding, dilation, False), {}
        changed += 1
    if changed:
        graph_module.graph.lint()
        graph_module.recompile()
    return changed
