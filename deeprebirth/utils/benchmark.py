"""Measuring latency and peak memory without fooling yourself (see BENCHMARKING notes in README).

- :func:`interleaved_timings` runs variants A B A B … in one process after a warm-up, so machine
  noise hits every variant alike; compare medians and report ratios.
- :func:`peak_extra_memory` measures the peak resident memory a call adds (VmHWM after minus
  VmRSS before, the peak reset through ``/proc/self/clear_refs``), with glibc set to serve every
  buffer over 64 KiB by mmap so freed activations leave the process and each call's peak is its own.
- :func:`machine_line` describes the machine for every table.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 64 * 1024
_allocator_configured = False


@dataclass(frozen=True)
class Timing:
    """Latency samples of one variant, in milliseconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def __str__(self) -> str:
        return f"{self.median:.3f} ms [{self.min:.3f}, {self.max:.3f}]"


def interleaved_timings(
    variants: Mapping[str, Callable[[], object]], repeats: int = 20, warmup: int = 3
) -> dict[str, Timing]:
    """Times each variant ``repeats`` times, interleaved (A B A B …), after ``warmup`` rounds.

    Example:
        >>> t = interleaved_timings({"a": lambda: sum(range(100)), "b": lambda: 0}, repeats=3)
        >>> sorted(t), len(t["a"].samples)
        (['a', 'b'], 3)
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: Timing(tuple(s)) for name, s in samples.items()}


def configure_allocator() -> str:
    """Makes glibc mmap every allocation over 64 KiB and never keep freed memory; returns a note.

    This removes allocator churn noise (page faults on reused heap) and makes the resident set
    track live tensors, which :func:`peak_extra_memory` relies on.
    """
    global _allocator_configured
    if not _allocator_configured and platform.system() == "Linux":
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
            libc.mallopt(_M_TRIM_THRESHOLD, 0)
            _allocator_configured = True
        except OSError:
            pass
    return (
        f"glibc mmap_threshold={_MMAP_THRESHOLD_BYTES} trim_threshold=0"
        if _allocator_configured
        else "default allocator"
    )


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_extra_memory(fn: Callable[[], object]) -> int:
    """Peak resident bytes that ``fn()`` adds on top of what the process holds before the call.

    Includes the call's temporaries and its output. Linux only.

    Raises:
        RuntimeError: the platform has no /proc/self/clear_refs (not Linux).
    """
    configure_allocator()
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset VmHWM to the current RSS
    except OSError as error:
        raise RuntimeError(f"peak memory needs Linux /proc/self/clear_refs: {error}") from error
    before = _status_kib("VmRSS")
    with torch.inference_mode():
        result = fn()
    peak = _status_kib("VmHWM")
    del result
    return max(0, peak - before) * 1024


def machine_line() -> str:
    """One line describing CPU, cores, threads, torch version and allocator setting."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, {torch.__config__.parallel_info().splitlines()[-1].strip()}) "
        f"| {configure_allocator()}"
    )
