"""Helpers shared by rules that follow a chain of single-consumer layers in a ModelGraph."""

from __future__ import annotations

from torch import nn

from deeprebirth.surgery.trace import GraphNode, ModelGraph, is_norm_act

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


def after_norm(bn: nn.Module) -> nn.Module:
    """What stays of a BatchNorm layer once its normalisation is folded away: ``nn.Identity`` for
    a plain BatchNorm; for a norm-act layer (:func:`~deeprebirth.surgery.trace.is_norm_act`) its
    own ``drop`` and ``act`` modules, in that order (``nn.Identity`` when both are Identity).

    Example:
        >>> after_norm(nn.BatchNorm2d(8))
        Identity()
    """
    if not is_norm_act(bn):
        return nn.Identity()
    tail = [
        module
        for module in (getattr(bn, "drop", None), getattr(bn, "act", None))
        if isinstance(module, nn.Module) and not isinstance(module, nn.Identity)
    ]
    if not tail:
        return nn.Identity()
    return tail[0] if len(tail) == 1 else nn.Sequential(*tail)


def norm_ends_in_relu(bn: nn.Module) -> bool:
    """Whether a BatchNorm layer applies a ReLU itself (a norm-act layer whose only remaining
    step is ``nn.ReLU``), so that chains conv -> BN -> ReLU may end at it."""
    return isinstance(after_norm(bn), nn.ReLU)
