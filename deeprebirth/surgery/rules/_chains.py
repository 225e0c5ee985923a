"""Helpers shared by rules that follow a chain of single-consumer layers in a ModelGraph."""

from __future__ import annotations

from torch import nn

from deeprebirth.surgery.trace import GraphNode, ModelGraph

POOLS = (nn.MaxPool2d, nn.AvgPool2d)
BATCHNORMS = nn.modules.batchnorm._BatchNorm


def called_once(graph: ModelGraph, *paths: str) -> str:
    """'' when every module path is called exactly once, else the reason naming the first that is not."""
    for path in paths:
        count = graph.call_counts.get(path, 0)
        if count != 1:
            return f"{path} is called {count} times (shared layers are left alone)"
    return ""


def sole_user(graph: ModelGraph, node: GraphNode) -> GraphNode | None:
    """The only node reading ``node``'s output, or None if there are zero or several."""
    users = graph.users(node)
    return users[0] if len(users) == 1 else None


def describe(graph: ModelGraph, node: GraphNode) -> str:
    """``'conv1.bn (BatchNorm2d)'``-style name of a node for reasons."""
    module = graph.module(node)
    if module is None:
        return "a ReLU" if node.kind == "relu" else "a non-module op"
    return f"{node.target} ({type(module).__name__})"
