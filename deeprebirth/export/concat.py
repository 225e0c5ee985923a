"""Channel concatenations distributed over the layers that read them (an exact rewrite).

An Inception module ends in ``cat([branch_1, branch_2, ...], 1)``, and the next layers read the
whole concatenation. Runtimes that give every tensor its own buffer (XNNPACK in ExecuTorch, ONNX
Runtime, OpenVINO for some layouts) copy every branch into it. The copy is not needed: a
convolution is linear in its input channels, so

    conv2d(cat([a, b], 1), W, bias) == conv2d(a, W[:, :Ca], bias) + conv2d(b, W[:, Ca:])

for any kernel size, stride, padding and dilation (zero padding is zero in every channel), and
the same holds for ``linear``. Channel-wise layers between the concatenation and its readers
(pooling, ReLU, inference dropout, ``flatten(1)``) act on each branch alone, so the
concatenation moves past them first. Each reader then convolves each branch with its slice of the
weights, and the branch outputs are added. Multiply-adds do not change.

The additions are not free: with ``k`` branches, each reader adds ``k - 1`` sums of its output
(two reads and a write each), where the concatenation cost one read and one write of its own
output. A concatenation is distributed only when that memory traffic goes down:
``3 (k - 1) * (elements the splittable readers write) < 2 * (elements of the concatenation)``.
GoogLeNet-Slim's two-branch modules, read by narrow reducers, pass; the original GoogLeNet's
four-branch modules, read by four wide layers, do not (measured: docs/export.md).

:func:`distribute_concatenations` rewrites an exported program this way and exports the result
again. A concatenation with any other reader (an in-place operation, an output, a grouped
convolution, a layer whose weight is computed) is kept as it is. The sums are reassociated, so
outputs move by float rounding only.
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import Any

import torch
from torch import fx

aten = torch.ops.aten

# Layers that act on each channel alone: f(cat(parts, 1)) == cat([f(p) for p in parts], 1).
_CHANNELWISE = {
    aten.relu.default,
    aten.max_pool2d.default,
    aten.avg_pool2d.default,
    aten.adaptive_avg_pool2d.default,
}


def _argument(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _value(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else node


def _elements(node: fx.Node) -> int:
    # Per sample: the batch dimension is the same on both sides of the comparison.
    return math.prod(int(s) for s in node.meta["val"].shape[1:])


def _channel_parts(node: fx.Node) -> list[fx.Node] | None:
    """The inputs of ``node`` when it concatenates 2-D or 4-D tensors along dimension 1."""
    if node.op != "call_function" or node.target is not aten.cat.default:
        return None
    parts, value = node.args[0], node.meta.get("val")
    if value is None or value.dim() not in (2, 4) or len(parts) < 2:
        return None
    if _argument(node, 1, "dim", 0) % value.dim() != 1:
        return None
    if not all(isinstance(p, fx.Node) and p.meta.get("val") is not None for p in parts):
        return None
    return list(parts)


def _reads_only_input(user: fx.Node, cat: fx.Node) -> bool:
    # The concatenation is the layer's input (argument 0) and nothing else.
    flat = list(itertools.chain(user.args[1:], user.kwargs.values()))
    return user.args[0] is cat and cat not in flat


def _is_channelwise(user: fx.Node, cat: fx.Node) -> bool:
    if not _reads_only_input(user, cat):
        return False
    if user.target in _CHANNELWISE:
        return True
    if user.target is aten.dropout.default:  # inference dropout is the identity
        return not _argument(user, 2, "train", True)
    if user.target is aten.flatten.using_ints:
        rank = cat.meta["val"].dim()
        start, end = _argument(user, 1, "start_dim", 0), _argument(user, 2, "end_dim", -1)
        return start % rank == 1 and end % rank == rank - 1
    return False


def _is_splittable(user: fx.Node, cat: fx.Node) -> bool:
    if not _reads_only_input(user, cat):
        return False
    weight = _argument(user, 1, "weight", None)
    bias = _argument(user, 2, "bias", None)
    if not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return False
    if bias is not None and (not isinstance(bias, fx.Node) or bias.op != "get_attr"):
        return False
    if user.target is aten.conv2d.default:
        return _argument(user, 6, "groups", 1) == 1
    return user.target is aten.linear.default


class _Rewriter:
    def __init__(self, module: fx.GraphModule) -> None:
        self.module = module
        self.graph = module.graph
        self.count = 0

    def _call(self, target: Any, args: tuple, kwargs: dict, like: Any) -> fx.Node:
        node = self.graph.call_function(target, args, kwargs)
        if like is None:  # compute the value from the inputs' fake tensors
            fake = next(_value(a) for a in args if isinstance(a, fx.Node))
            with fake.fake_mode:
                like = target(
                    *[_value(a) for a in args], **{k: _value(v) for k, v in kwargs.items()}
                )
        node.meta["val"] = like
        return node

    def _weight_slice(self, weight: fx.Node, start: int, stop: int) -> fx.Node:
        # A parameter or a buffer: the slice is held the same way as the weight it comes from.
        tensor = operator.attrgetter(weight.target)(self.module)
        name = f"_distributed_weight_{self.count}"
        self.count += 1
        part = tensor.detach()[:, start:stop].contiguous()
        if isinstance(tensor, torch.nn.Parameter):
            self.module.register_parameter(name, torch.nn.Parameter(part, requires_grad=False))
        else:
            self.module.register_buffer(name, part)
        node = self.graph.get_attr(name)
        node.meta["val"] = weight.meta.get("val")
        return node

    def _push_past(self, user: fx.Node, parts: list[fx.Node]) -> fx.Node:
        moved = [
            self._call(user.target, (p, *user.args[1:]), dict(user.kwargs), None) for p in parts
        ]
        return self._call(aten.cat.default, (moved, 1), {}, user.meta.get("val"))

    def _split(self, user: fx.Node, parts: list[fx.Node]) -> fx.Node:
        weight, bias = _argument(user, 1, "weight", None), _argument(user, 2, "bias", None)
        rest = tuple(user.args[3:])
        total, start = None, 0
        for i, part in enumerate(parts):
            width = part.meta["val"].shape[1]
            args = (
                part,
                self._weight_slice(weight, start, start + width),
                bias if i == 0 else None,
            )
            out = self._call(user.target, args + rest, dict(user.kwargs), user.meta.get("val"))
            total = (
                out
                if total is None
                else self._call(aten.add.Tensor, (total, out), {}, user.meta.get("val"))
            )
            start += width
        return total

    def rewrite(self, cat: fx.Node, parts: list[fx.Node]) -> bool:
        users = list(cat.users)
        channelwise = [u for u in users if _is_channelwise(u, cat)]
        split = [u for u in users if u not in channelwise and _is_splittable(u, cat)]
        if not users or len(channelwise) + len(split) < len(users):
            return False
        if 3 * (len(parts) - 1) * sum(map(_elements, split)) >= 2 * _elements(cat):
            return False
        for user in users:
            with self.graph.inserting_before(user):
                if user in channelwise:
                    new = self._push_past(user, parts)
                else:
                    new = self._split(user, parts)
            new.meta.update({k: v for k, v in user.meta.items() if k != "val"})
            user.replace_all_uses_with(new)
            self.graph.erase_node(user)
        self.graph.erase_node(cat)
        return True


def distribute_in_graph(module: fx.GraphModule) -> int:
    """Rewrites ``module`` (an unlifted exported graph: weights read with ``get_attr``) in place;
    returns how many concatenations it removed. Weights that no node reads any more are deleted.
    """
    rewriter, removed, changed = _Rewriter(module), 0, True
    while changed:
        changed = False
        for node in list(module.graph.nodes):
            parts = _channel_parts(node)
            if parts is not None and rewriter.rewrite(node, parts):
                removed, changed = removed + 1, True
    if removed:
        for node in list(module.graph.nodes):
            if node.op == "get_attr" and not node.users:
                module.graph.erase_node(node)
        module.delete_all_unused_submodules()
        used = {n.target for n in module.graph.nodes if n.op == "get_attr"}
        for name, _ in list(module.named_parameters()):
            if name not in used:
                owner, _, leaf = name.rpartition(".")
                delattr(module.get_submodule(owner) if owner else module, leaf)
        module.graph.lint()
        module.recompile()
    return removed


def distribute_concatenations(
    program: torch.export.ExportedProgram, dynamic_shapes: Any = None
) -> torch.export.ExportedProgram:
    """``program`` with every channel concatenation that only convolutions, ``linear`` layers
    and channel-wise layers read distributed over them where that moves less memory (see the
    module docstring); ``program`` itself when there is none.

    Args:
        program: a ``torch.export`` program of one tensor input (its example input is reused).
        dynamic_shapes: the ``dynamic_shapes`` ``program`` was exported with.

    Example:
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 5, 3, padding=1)
        ...         self.c = torch.nn.Conv2d(9, 2, 3)
        ...     def forward(self, x):
        ...         return self.c(torch.cat([self.a(x), self.b(x)], 1))
        >>> x = torch.randn(1, 3, 8, 8)
        >>> program = distribute_concatenations(torch.export.export(Net().eval(), (x,)))
        >>> any(n.target is torch.ops.aten.cat.default for n in program.graph.nodes)
        False
    """
    module = program.module()
    if not distribute_in_graph(module):
        return program
    args, kwargs = program.example_inputs
    return torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes)
