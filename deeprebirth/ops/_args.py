"""Small argument normalisers shared by the operator wrappers."""

from __future__ import annotations

from collections.abc import Sequence


def pair(value: int | Sequence[int], name: str) -> list[int]:
    """``3 -> [3, 3]``; ``(3, 2) -> [3, 2]``. Raises ValueError naming ``name`` otherwise."""
    if isinstance(value, int):
        return [value, value]
    values = list(value)
    if len(values) == 1:
        return values * 2
    if len(values) != 2 or not all(isinstance(v, int) for v in values):
        raise ValueError(f"expected {name} to be an int or a pair of ints, but got {value!r}")
    return values
