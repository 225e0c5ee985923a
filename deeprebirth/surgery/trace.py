"""The data flow between a model's layers, as rules see it: :class:`ModelGraph`.

:func:`build_graph` traces the model with ``torch.fx`` (standard ``torch.nn`` layers, the
deeprebirth ops and timm's norm-act layers, see :func:`is_norm_act`, are leaves). When a model
does not trace (data-dependent control flow, unsupported Python), it warns and falls back to
walking known block types instead: every ``nn.Sequential`` is a chain of its children, and the
blocks listed in :data:`KNOWN_BLOCKS` (torchvision's ``BasicConv2d``, ResNet stem and blocks,
SqueezeNet's ``Fire``, bvlc_googlenet's and torchvision GoogLeNet's ``Inception``) contribute the
chains and fan-outs their ``forward`` is known to compute. Anything else is opaque
and simply offers no sites.

Nodes are module calls (``kind="module"``), ReLUs (module or function, ``kind="relu"``) and
everything else (``kind="other"``). ``nn.Identity`` calls are transparent (edges go through them),
so layers that earlier rules replaced by Identity do not break later patterns.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from deeprebirth.nn import (
    BranchConv2d,
    ConvPool2d,
    InferenceLinear,
    InferenceMaxPool2d,
    PackedConv2d,
    PackedResidualBlock,
    PackedResidualStage,
)

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_RELU_METHODS = {"relu", "relu_"}


# timm's BatchNorm subclasses that apply ``act(drop(batch_norm(x)))``, by class name in
# timm.layers.norm_act (timm is optional: looked up in sys.modules, never imported here).
_NORM_ACT_CLASSES = ("BatchNormAct2d", "SyncBatchNormAct")


def is_norm_act(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm that also applies its own ``drop`` and ``act`` children:
    timm's ``BatchNormAct2d`` (and ``SyncBatchNormAct``), ``y = act(drop(batch_norm(x)))``.

    Such a layer is a ``torch.nn.BatchNorm2d`` subclass, so BatchNorm rules see it; being a leaf
    of the trace, it is one node whose ``drop`` and ``act`` a rule keeps when it folds the
    normalisation away (:func:`deeprebirth.surgery.rules._chains.after_norm`). A subclass that
    overrides ``forward`` is not one (its computation is unknown), and is traced into.

    Example:
        >>> is_norm_act(nn.BatchNorm2d(8))
        False
    """
    norm_act = sys.modules.get("timm.layers.norm_act")
    if norm_act is None or not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return False
    classes = [getattr(norm_act, name, None) for name in _NORM_ACT_CLASSES]
    return any(
        isinstance(c, type) and isinstance(module, c) and type(module).forward is c.forward
        for c in classes
    )


class LeafTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps deeprebirth's fused and packed modules and timm's norm-act
    layers (:func:`is_norm_act`) as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        leaves = (
            ConvPool2d,
            BranchConv2d,
            PackedConv2d,
            PackedResidualBlock,
            PackedResidualStage,
            InferenceLinear,
            InferenceMaxPool2d,
        )
        if isinstance(m, leaves) or is_norm_act(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace_module(module: nn.Module) -> fx.GraphModule:
    """Traces ``module`` with :class:`LeafTracer` into a GraphModule (raises if it cannot).

    Type annotations are dropped from the graph: under ``from __future__ import annotations`` they
    are strings, which GraphModule's pickling (``torch.save`` of the model) cannot handle.
    """
    graph = LeafTracer().trace(module)
    for node in graph.nodes:
        node.type = None
    return fx.GraphModule(module, graph, module.__class__.__name__)


@dataclass
class GraphNode:
    """One call in the model's data flow."""

    index: int
    kind: str
    target: str = ""
    inputs: list[int] = field(default_factory=list)
    users: list[int] = field(default_factory=list)


@dataclass
class ModelGraph:
    """Data flow between module calls; see the module docstring.

    Attributes:
        nodes: every call, in execution order (fx) or discovery order (walk).
        modules: qualified name -> module of the model.
        call_counts: how many times each module name is called (1 assumed when walked).
        traced: True when built by torch.fx.
        note: why tracing failed, when it did.
    """

    nodes: list[GraphNode]
    modules: dict[str, nn.Module]
    call_counts: Counter
    traced: bool
    note: str = ""

    def module(self, node: GraphNode) -> nn.Module | None:
        """The module a node calls, or None for ReLU functions and other ops."""
        return self.modules.get(node.target) if node.target else None

    def users(self, node: GraphNode) -> list[GraphNode]:
        """Nodes that read this node's output."""
        return [self.nodes[i] for i in node.users]

    def module_nodes(self, types: type | tuple[type, ...]) -> list[tuple[GraphNode, nn.Module]]:
        """``(node, module)`` for every call of a module of the given types."""
        found = []
        for node in self.nodes:
            module = self.module(node)
            if module is not None and isinstance(module, types):
                found.append((node, module))
        return found

    def add(self, kind: str, target: str = "", inputs: list[int] | None = None) -> GraphNode:
        """Appends a node reading ``inputs``; returns it."""
        node = GraphNode(len(self.nodes), kind, target, list(inputs or []))
        self.nodes.append(node)
        for i in node.inputs:
            self.nodes[i].users.append(node.index)
        return node


def _kind_of(module: nn.Module) -> str:
    return "relu" if isinstance(module, nn.ReLU) else "module"


def _graph_from_fx(model: nn.Module, graph: fx.Graph, modules: dict[str, nn.Module]) -> ModelGraph:
    result = ModelGraph([], modules, Counter(), traced=True)
    ids: dict[fx.Node, int] = {}
    for fx_node in graph.nodes:
        found: list[fx.Node] = []
        fx.node.map_arg((fx_node.args, fx_node.kwargs), found.append)
        inputs = [ids[a] for a in found if a in ids]
        inputs = list(dict.fromkeys(inputs))
        if fx_node.op == "call_module":
            module = modules[fx_node.target]
            result.call_counts[fx_node.target] += 1
            if isinstance(module, nn.Identity) and len(inputs) == 1:
                ids[fx_node] = inputs[0]
                continue
            node = result.add(_kind_of(module), fx_node.target, inputs)
        elif (fx_node.op == "call_function" and fx_node.target in _RELU_FUNCTIONS) or (
            fx_node.op == "call_method" and fx_node.target in _RELU_METHODS
        ):
            node = result.add("relu", "", inputs[:1])
        else:
            node = result.add("other", "", inputs)
        ids[fx_node] = node.index
    return result


# Known block types for the walk fallback, by class name: ``chains`` are attribute paths in data
# order ("@relu" is a functional ReLU); ``fanout`` lists convolutions that read the block input.
KNOWN_BLOCKS: dict[str, dict[str, list[list[str]]]] = {
    "BasicConv2d": {"chains": [["conv", "bn", "@relu"]], "fanout": []},
    "ResNet": {"chains": [["conv1", "bn1", "relu", "maxpool"]], "fanout": []},
    "BasicBlock": {
        "chains": [["conv1", "bn1", "relu", "conv2", "bn2"]],
        "fanout": [["conv1", "downsample.0"]],
    },
    "Bottleneck": {
        "chains": [["conv1", "bn1", "@relu", "conv2", "bn2", "@relu", "conv3", "bn3"]],
        "fanout": [["conv1", "downsample.0"]],
    },
    "Fire": {"chains": [["squeeze", "squeeze_activation"]], "fanout": [["expand1x1", "expand3x3"]]},
    "Inception": {
        "chains": [
            ["conv_3x3_reduce", "@relu", "conv_3x3"],
            ["conv_5x5_reduce", "@relu", "conv_5x5"],
            ["pool", "pool_proj"],
        ],
        "fanout": [
            ["conv_1x1", "conv_3x3_reduce", "conv_5x5_reduce"],  # deeprebirth's bvlc_googlenet
            ["branch1.conv", "branch2.0.conv", "branch3.0.conv"],  # torchvision's GoogLeNet
        ],
    },
}


def _graph_from_walk(model: nn.Module, modules: dict[str, nn.Module], note: str) -> ModelGraph:
    result = ModelGraph([], modules, Counter(), traced=False, note=note)
    node_of: dict[str, int] = {}

    def join(prefix: str, attr: str) -> str:
        return f"{prefix}.{attr}" if prefix else attr

    def module_node(path: str, inputs: list[int]) -> int:
        if path in node_of:
            node = result.nodes[node_of[path]]
            for i in inputs:
                if i not in node.inputs:
                    node.inputs.append(i)
                    result.nodes[i].users.append(node.index)
            return node.index
        result.call_counts[path] = 1
        node_of[path] = result.add(_kind_of(modules[path]), path, inputs).index
        return node_of[path]

    def add_chain(paths: list[str], start: int) -> int:
        previous = start
        for path in paths:
            if path.endswith("@relu"):
                previous = result.add("relu", "", [previous]).index
            elif path in modules and isinstance(modules[path], nn.Identity):
                continue
            elif path in modules:
                previous = module_node(path, [previous])
            else:
                previous = result.add("other").index  # missing attribute: chain is broken
        return previous

    for name, module in modules.items():
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            add_chain(
                [join(name, child) for child, _ in module.named_children()],
                result.add("other").index,
            )
        spec = KNOWN_BLOCKS.get(type(module).__name__)
        if spec is None:
            continue
        for fanout in spec["fanout"]:
            paths = [join(name, attr) for attr in fanout if join(name, attr) in modules]
            if len(paths) > 1:
                source = result.add("other").index
                for path in paths:
                    module_node(path, [source])
        for chain in spec["chains"]:
            paths = [join(name, attr) if attr != "@relu" else join(name, "@relu") for attr in chain]
            first = paths[0]
            start = result.add("other").index if first not in node_of else None
            if start is None:
                add_chain(paths[1:], node_of[first])
            else:
                add_chain(paths, start)
    return result


def build_graph(model: nn.Module) -> ModelGraph:
    """The model's :class:`ModelGraph`: torch.fx when it traces, else the walk fallback (warns).

    Example:
        >>> g = build_graph(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
        >>> [n.target for n in g.nodes if n.kind == "module"], g.traced
        (['0', '1'], True)
    """
    modules = dict(model.named_modules())
    try:
        graph = LeafTracer().trace(model)
    except Exception as error:  # fx raises many types (TraceError, TypeError, RuntimeError …)
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        note = (
            f"torch.fx could not trace {type(model).__name__} ({type(error).__name__}: {first_line}); "
            "fell back to walking nn.Sequential and known block types "
            f"({', '.join(KNOWN_BLOCKS)}): sites elsewhere are not found"
        )
        warnings.warn(note, UserWarning, stacklevel=3)
        return _graph_from_walk(model, modules, note)
    return _graph_from_fx(model, graph, modules)
