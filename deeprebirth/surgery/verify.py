"""``verify(original, slim, inputs)``: how far a slimmed model's outputs are from the original's."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

EXACT_RTOL = 1e-4


@dataclass(frozen=True)
class Verification:
    """Output differences of two models on the same inputs.

    Attributes:
        max_abs: largest ``|slim - original|`` over all outputs.
        max_rel: ``max_abs / max|original|`` (relative to the output's scale, so that outputs near
            zero do not blow it up).
        tolerance: the relative tolerance ``ok`` uses.
    """

    max_abs: float
    max_rel: float
    tolerance: float = EXACT_RTOL

    @property
    def ok(self) -> bool:
        """``max_rel <= tolerance`` (fp32 rounding level for exact plans)."""
        return self.max_rel <= self.tolerance

    def __str__(self) -> str:
        verdict = "within" if self.ok else "OUTSIDE"
        return f"max |diff| {self.max_abs:.3e}, relative {self.max_rel:.3e} ({verdict} {self.tolerance:g})"


def _flat_tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [t for item in value for t in _flat_tensors(item)]
    return []


@torch.no_grad()
def verify(
    original: nn.Module,
    slim: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    tolerance: float = EXACT_RTOL,
) -> Verification:
    """Runs both models in eval mode on ``inputs`` and compares every output tensor.

    Both models are restored to their previous train/eval mode afterwards.

    Raises:
        ValueError: the models return different numbers or shapes of tensors.

    Example:
        >>> slim_model, _ = deeprebirth.slim(model, "fold_bn", x)  # doctest: +SKIP
        >>> deeprebirth.verify(model, slim_model, x).ok              # doctest: +SKIP
        True
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    modes = (original.training, slim.training)
    original.eval()
    slim.eval()
    try:
        expected = _flat_tensors(original(*args))
        actual = _flat_tensors(slim(*args))
    finally:
        original.train(modes[0])
        slim.train(modes[1])
    if len(expected) != len(actual):
        raise ValueError(
            f"expected {len(expected)} output tensors from slim, but got {len(actual)}"
        )
    max_abs, scale = 0.0, 0.0
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if e.shape != a.shape:
            raise ValueError(
                f"output {i}: expected shape {tuple(e.shape)}, but got {tuple(a.shape)}"
            )
        max_abs = max(max_abs, (a.double() - e.double()).abs().max().item())
        scale = max(scale, e.double().abs().max().item())
    return Verification(max_abs, max_abs / scale if scale > 0 else max_abs, tolerance)
