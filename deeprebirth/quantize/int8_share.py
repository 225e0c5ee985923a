"""How much of a quantized graph computes in int8.

A converted PT2E graph states its int8 work as ``dequantize -> op -> quantize``: a convolution
or linear layer whose input and weight both come out of ``dequantize`` nodes is an int8 kernel
once a backend fuses the pattern (XNNPACK in a ``.pte``, oneDNN under inductor), and nothing else
does the tensor work of a CNN. :func:`int8_share` counts those layers against all of them; for
a lowered ExecuTorch program it reads the XNNPACK subgraphs (:func:`lowered_int8_share`), so
the count is of what runs inside the delegate.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

# Operators that hold the weights of a CNN, in the aten (export) and edge (ExecuTorch) dialects.
_WEIGHTED = ("aten.conv2d", "aten.convolution", "aten.linear", "aten.addmm", "aten.mm")
# Operators that only move or reshape data: a dequantized weight may pass through them.
_LAYOUT = ("aten.permute", "aten.t", "aten.view", "aten.reshape", "aten.transpose", "aten.clone")


def op_name(target: Any) -> str:
    """``"aten.conv2d.default"`` for an ATen overload or an ExecuTorch edge operator."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    return str(getattr(target, "_op", target))  # EdgeOpOverload wraps the ATen overload


def _base(name: str) -> str:
    return name.rsplit(".", 1)[0] if name.count(".") >= 2 else name


def _is_dequantize(node: Any) -> bool:
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    name = op_name(node.target)
    return name.startswith(("quantized_decomposed.dequantize", "torchao.dequantize"))


def _from_dequantize(node: Any) -> bool:
    """Whether ``node`` is a dequantize, possibly seen through layout-only operators."""
    while isinstance(node, fx.Node) and node.op == "call_function":
        if _is_dequantize(node):
            return True
        if _base(op_name(node.target)) not in _LAYOUT or not node.args:
            return False
        node = node.args[0]
    return False


@dataclass
class Int8Share:
    """The int8 part of a quantized graph.

    Attributes:
        int8_layers: convolutions / linears with int8 input and int8 weights.
        layers: all convolutions / linears.
        quantize_nodes: ``quantize`` operators (float -> int8), e.g. at the input and where
            float operators sit between int8 ones.
        dequantize_nodes: ``dequantize`` operators (int8 -> float), weights included.
        float_layers: operator name -> count of the convolutions / linears left in float.
    """

    int8_layers: int
    layers: int
    quantize_nodes: int
    dequantize_nodes: int
    float_layers: dict[str, int] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """``int8_layers / layers`` (0 for a graph without any)."""
        return self.int8_layers / self.layers if self.layers else 0.0

    def summary(self) -> str:
        """One line, e.g. ``int8: 40/40 conv/linear layers (100%); 55 quantize, 104 dequantize``."""
        line = (
            f"int8: {self.int8_layers}/{self.layers} conv/linear layers ({100 * self.fraction:.0f}%); "
            f"{self.quantize_nodes} quantize, {self.dequantize_nodes} dequantize"
        )
        if self.float_layers:
            listed = ", ".join(f"{k} x{v}" for k, v in sorted(self.float_layers.items()))
            line += f"; float: {listed}"
        return line

    def __add__(self, other: Int8Share) -> Int8Share:
        floats = collections.Counter(self.float_layers) + collections.Counter(other.float_layers)
        return Int8Share(
            self.int8_layers + other.int8_layers,
            self.layers + other.layers,
            self.quantize_nodes + other.quantize_nodes,
            self.dequantize_nodes + other.dequantize_nodes,
            dict(floats),
        )


def int8_share(graph_module: fx.GraphModule) -> Int8Share:
    """The :class:`Int8Share` of a converted graph (``convert_pt2e``'s output, an exported
    program's ``graph_module``, or an XNNPACK subgraph's ``original_module``)."""
    int8 = layers = quantize = dequantize = 0
    floats: collections.Counter[str] = collections.Counter()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        if name.startswith(("quantized_decomposed.quantize", "torchao.quantize")):
            quantize += 1
        elif _is_dequantize(node):
            dequantize += 1
        elif _base(name) in _WEIGHTED:
            layers += 1
            # (input, weight): addmm's first argument is the bias.
            operands = node.args[1:3] if _base(name) == "aten.addmm" else node.args[:2]
            if len(operands) == 2 and all(map(_from_dequantize, operands)):
                int8 += 1
            else:
                floats[_base(name)] += 1
    return Int8Share(int8, layers, quantize, dequantize, dict(floats))


def lowered_int8_share(graph_module: fx.GraphModule) -> Int8Share:
    """The :class:`Int8Share` of what runs inside the XNNPACK subgraphs of a lowered program
    (``edge_manager.exported_program().graph_module``); layers outside the delegate are not
    counted (:class:`~deeprebirth.export.executorch.DelegationReport` lists those)."""
    total = Int8Share(0, 0, 0, 0)
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            total = total + int8_share(getattr(graph_module, node.target).original_module)
    return total
