"""What a model costs besides time: parameters, MACs, storage, runtime memory, batch capacity.

MACs and activation bytes come from :func:`deeprebirth.surgery.profile_modules` (a shape-only
forward with hooks; tensor layers only: convolutions, linear and deeprebirth's fused ops), so the
benchmark counts exactly what the slimming plans report. Peak runtime memory is the allocator's
account of live tensors during a forward (:func:`peak_tensor_bytes`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deeprebirth.surgery import profile_modules


@dataclass(frozen=True)
class ModelCosts:
    """Shape-derived costs of one model for one image of ``image_size``.

    Attributes:
        params: parameter count.
        macs: multiply-accumulates of one image (tensor layers).
        act_bytes: bytes of the layer outputs of one image.
        weight_bytes: bytes of parameters and buffers.
        file_bytes: size of ``torch.save(model.state_dict())`` (storage).
    """

    params: int
    macs: int
    act_bytes: int
    weight_bytes: int
    file_bytes: int

    @property
    def gflop(self) -> float:
        """GFLOP of one image (2 FLOP per MAC)."""
        return 2 * self.macs / 1e9


def state_dict_bytes(model: nn.Module) -> int:
    """Size in bytes of ``torch.save(model.state_dict())``, the model's storage on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def model_costs(model: nn.Module, image_size: int, in_channels: int = 3) -> ModelCosts:
    """Parameters, MACs, activation bytes (one image), weight and file bytes of ``model``.

    Example:
        >>> c = model_costs(nn.Sequential(nn.Conv2d(3, 8, 3)), 10)
        >>> c.params, c.macs   # 8*3*3*3 + 8; 8 x 8x8 outputs x 27 MACs
        (224, 13824)
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(1, in_channels, image_size, image_size, device=device)
    root = profile_modules(model, example)[""]
    tensors = list(model.parameters()) + list(model.buffers())
    return ModelCosts(
        params=root.params,
        macs=root.macs,
        act_bytes=root.act_bytes,
        weight_bytes=sum(t.numel() * t.element_size() for t in tensors),
        file_bytes=state_dict_bytes(model),
    )


def peak_tensor_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensors one call of ``fn`` holds on top of those alive before the call
    (activations, workspace tensors, its output), by the allocator's own accounting.

    CPU: the running sum of allocations and frees ``torch.profiler(profile_memory=True)``
    records; CUDA: the caching allocator's peak. Unlike the resident set, this does not depend
    on what the process did before (a fragmented heap serves a forward from pages that are
    already resident, and the resident set then grows by nothing).

    Example:
        >>> peak_tensor_bytes(lambda: torch.ones(1000)), peak_tensor_bytes(lambda: None)
        (4000, 0)
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del result
        return max(0, peak - before)
    with (
        torch.inference_mode(),
        torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as profiler,
    ):
        result = fn()
    del result
    results = getattr(profiler.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError("this torch's profiler exposes no memory records (kineto_results)")
    records = sorted(
        (event.start_ns(), event.nbytes())
        for event in results.events()
        if event.name() == "[memory]" and event.device_type() == torch._C._autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in records:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure_peak_memory(
    model: nn.Module, image_size: int, batches: Sequence[int], device: torch.device | str = "cpu"
) -> dict[int, int]:
    """``{batch: peak_tensor_bytes of one forward}``, each after one warm-up forward."""
    peaks = {}
    for batch in batches:
        x = torch.randn(batch, 3, image_size, image_size, device=device)
        with torch.inference_mode():
            model(x)
        peaks[batch] = peak_tensor_bytes(lambda x=x: model(x), device)
    return peaks


def max_batch_within(
    budget_bytes: int, weight_bytes: int, peak_by_batch: Mapping[int, int]
) -> int | None:
    """Largest batch whose weights + peak extra memory fit in ``budget_bytes``.

    The peak is modelled as linear in the batch, ``a + s * batch``, through the smallest and the
    largest measured batch of ``peak_by_batch`` (``{batch: peak extra bytes}``). Returns 0 when not
    even one image fits and None when the measurements do not grow with the batch (no estimate).

    Example:
        >>> max_batch_within(1000, 100, {1: 60, 5: 220})   # a = 20, s = 40: 100 + 20 + 40 * 22 = 1000
        22
    """
    if len(peak_by_batch) < 2:
        raise ValueError(
            f"expected peaks at two batch sizes at least, but got {dict(peak_by_batch)}"
        )
    low, high = min(peak_by_batch), max(peak_by_batch)
    slope = (peak_by_batch[high] - peak_by_batch[low]) / (high - low)
    if slope <= 0:
        return None
    intercept = peak_by_batch[low] - slope * low
    return max(0, math.floor((budget_bytes - weight_bytes - intercept) / slope))
