"""Measuring latency and peak memory without fooling yourself (docs/benchmarks.md).

- :func:`interleaved_timings` runs variants A B A B … in one process after a warm-up, so machine
  noise hits every variant alike; compare medians and report ratios. A sample of a
  sub-millisecond call is the mean of enough back-to-back calls to fill a millisecond. Variants
  that run in different runtimes (thread pools) take ``settle_ms=RUNTIME_SETTLE_MS``: each sample
  then follows untimed calls of its own variant, after the previous variant's pool stopped
  spinning.
- :func:`paired_ratio`: the speed-up of two variants timed in the same rounds, as the median of
  the per-round ratios, which a machine that drifts between rounds does not move;
  :func:`speed_ratio` uses it when it can. :func:`pooled_timings` joins the rounds of several
  timing runs (processes) into one set that pairs the same way.
- :func:`benchmark_allocator` (entered by :func:`interleaved_timings` for its own duration) keeps
  freed activation buffers in glibc's heap, so repeated forwards do not map, fault in and unmap
  them again (allocator churn). Leaving it restores glibc's default thresholds: importing or
  calling this module changes nothing for the rest of the process. :func:`configure_allocator`
  sets the same thresholds for the whole process, for a benchmark script's own entry point.
- :func:`peak_extra_rss_bytes` measures the peak resident memory a call adds (VmHWM after minus
  VmRSS before, the peak reset through ``/proc/self/clear_refs``); for the duration of that one
  call glibc returns its cached memory and serves every buffer over 64 KiB by mmap, so the resident
  set tracks live tensors and each call's peak is its own.
- :func:`machine_line` describes the machine for every table.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import itertools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_NO_CHURN_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit
_NO_CHURN_TRIM_THRESHOLD = 1024 * 1024 * 1024
_TRACKING_MMAP_THRESHOLD = 64 * 1024
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024  # glibc's initial mmap and trim thresholds
_allocator_configured = False
_benchmark_depth = 0
_round_sets = itertools.count(1)

RUNTIME_SETTLE_MS = 20.0
"""``settle_ms`` for :func:`interleaved_timings` over variants in different runtimes. A thread
pool's workers spin for milliseconds after its last call before they sleep (libgomp's default 300k
spins took about 5 ms on Zen 4), and on a 2-core machine the spinning worker takes a core from the
next runtime: the first ExecuTorch or OpenVINO forward after a PyTorch one ran 1.5x its steady
time, and the first PyTorch forward after either of them 1.06x (docs/benchmarks.md). 20 ms
covers a spin four times that long."""


@dataclass(frozen=True)
class Timing:
    """Latency samples of one variant, in milliseconds.

    Attributes:
        samples: one per timed round; each the mean of ``calls`` back-to-back calls.
        calls: calls per sample (1 unless a call took under ``min_sample_ms`` of
            :func:`interleaved_timings`).
        rounds: which :func:`interleaved_timings` call measured it (None: unknown). Timings with
            the same ``rounds`` have one sample per round, in round order, so :func:`paired_ratio`
            may pair them.
    """

    samples: tuple[float, ...]
    calls: int = 1
    rounds: int | None = None

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


def paired_ratio(baseline: Timing, timing: Timing) -> float:
    """Median over rounds of ``baseline``'s sample / ``timing``'s sample (above 1: ``timing`` is
    faster), for two variants timed in the same interleaved rounds, sample ``i`` of each in round
    ``i``.

    The two samples of a round are taken a few milliseconds apart, so a machine that changes speed
    between rounds moves both alike and their ratio stays put; the ratio of the two medians does
    not when the rounds come from two machine states (docs/benchmarks.md, "Measurement traps").

    Raises:
        ValueError: the two have different numbers of samples (not from the same rounds).

    Example:
        >>> slow_then_fast = Timing((12.0, 6.0, 6.0)), Timing((4.0, 3.0, 2.0))
        >>> paired_ratio(*slow_then_fast), slow_then_fast[0].median / slow_then_fast[1].median
        (3.0, 2.0)
    """
    if len(baseline.samples) != len(timing.samples):
        raise ValueError(
            f"paired_ratio needs one sample per round of each: got {len(baseline.samples)} and "
            f"{len(timing.samples)} samples"
        )
    return statistics.median(a / b for a, b in zip(baseline.samples, timing.samples, strict=True))


def speed_ratio(baseline: Timing, timing: Timing) -> float:
    """``baseline``'s time over ``timing``'s (above 1: ``timing`` is faster): :func:`paired_ratio`
    when both come from the same :func:`interleaved_timings` call, else the ratio of the medians.

    Example:
        >>> a, b = Timing((12.0, 6.0, 6.0)), Timing((4.0, 3.0, 2.0))
        >>> speed_ratio(a, b), speed_ratio(Timing(a.samples, rounds=7), Timing(b.samples, rounds=7))
        (2.0, 3.0)
    """
    if baseline.rounds is not None and baseline.rounds == timing.rounds:
        return paired_ratio(baseline, timing)
    return baseline.median / timing.median


def interleaved_timings(
    variants: Mapping[str, Callable[[], object]],
    repeats: int = 20,
    warmup: int = 3,
    prepare: Mapping[str, Callable[[], object]] | None = None,
    min_sample_ms: float = 1.0,
    settle_ms: float = 0.0,
) -> dict[str, Timing]:
    """Times each variant ``repeats`` times, interleaved (A B A B …), after ``warmup`` rounds.

    Args:
        variants: name -> the call to time.
        prepare: name -> a call run untimed before each of that variant's samples (a runtime's
            process-wide setting, such as ExecuTorch's thread pool size).
        min_sample_ms: a variant whose last warm-up call took less is called back to back
            ``ceil(min_sample_ms / that time)`` times per sample, and the sample is their mean
            (as ``timeit``'s autorange does): one call of a tenth of a millisecond measures the
            timer and the caches the previous variant left as much as the variant itself. 0,
            or no warm-up, times single calls.
        settle_ms: before each sample (after ``prepare``), the variant runs untimed until this
            many milliseconds of its calls have passed, at least once if above 0: each sample
            then measures the variant's steady state, not the previous variant's spinning thread
            pool or cache contents (:data:`RUNTIME_SETTLE_MS`).

    Example:
        >>> t = interleaved_timings({"a": lambda: sum(range(100)), "b": lambda: 0}, repeats=3)
        >>> sorted(t), len(t["a"].samples), t["b"].calls > 1
        (['a', 'b'], 3, True)
    """
    samples: dict[str, list[float]] = {name: [] for name in variants}
    calls = dict.fromkeys(variants, 1)
    prepare = prepare or {}
    # Warm-up in the timed rounds' inference mode: compiled functions guard on it, and warming
    # up outside it left each one's recompilation inside the first timed call.
    with benchmark_allocator(), torch.inference_mode():
        for _ in range(warmup):
            for name, fn in variants.items():
                prepare.get(name, _nothing)()
                start = time.perf_counter()
                fn()
                once = (time.perf_counter() - start) * 1e3
                calls[name] = max(1, math.ceil(min_sample_ms / max(once, 1e-6)))
        for _ in range(repeats):
            for name, fn in variants.items():
                prepare.get(name, _nothing)()
                _settle(fn, settle_ms)
                number = calls[name]
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                samples[name].append((time.perf_counter() - start) * 1e3 / number)
    rounds = next(_round_sets)
    return {name: Timing(tuple(s), calls[name], rounds) for name, s in samples.items()}


def pooled_timings(
    parts: Sequence[Mapping[Hashable, Timing | None]],
) -> dict[Hashable, Timing | None]:
    """The timings of the same variants from several :func:`interleaved_timings` calls (one per
    process, say), pooled into one set of rounds: each variant's samples in the order of
    ``parts``, so sample ``i`` of every variant still comes from one round and
    :func:`paired_ratio` pairs them as before. Keys are the first part's; a variant that is None
    or missing in any part is None.

    Example:
        >>> a = {"x": Timing((2.0, 4.0), rounds=1), "y": Timing((1.0, 2.0), rounds=1)}
        >>> b = {"x": Timing((3.0,), rounds=2), "y": Timing((1.0,), rounds=2)}
        >>> pooled = pooled_timings([a, b])
        >>> pooled["x"].samples, paired_ratio(pooled["x"], pooled["y"])
        ((2.0, 4.0, 3.0), 2.0)
    """
    if not parts:
        return {}
    rounds = next(_round_sets)
    pooled: dict[Hashable, Timing | None] = {}
    for key, first in parts[0].items():
        timings = [part.get(key) for part in parts]
        if first is None or any(t is None for t in timings):
            pooled[key] = None
            continue
        samples = tuple(sample for t in timings for sample in t.samples)
        pooled[key] = Timing(samples, first.calls, rounds)
    return pooled


def _nothing() -> None:
    pass


def _settle(fn: Callable[[], object], settle_ms: float) -> None:
    """Calls ``fn`` untimed until ``settle_ms`` have passed (at least once if above 0)."""
    if settle_ms <= 0:
        return
    end = time.perf_counter() + settle_ms / 1e3
    fn()
    while time.perf_counter() < end:
        fn()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _set_glibc_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    libc = _libc()
    if libc is None:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def configure_allocator() -> str:
    """Keeps freed buffers under 32 MiB in glibc's heap and never trims it, for the whole process,
    so repeated forwards reuse memory instead of mapping and faulting it in again; returns a note
    for the machine line. For a benchmark script's own entry point only (library code uses
    :func:`benchmark_allocator`).

    Idempotent. Without it glibc's adaptive threshold maps and unmaps activations on every forward
    (thousands of page faults per GoogLeNet pass), which can double eager latency
    (docs/benchmarks.md).
    """
    global _allocator_configured
    if not _allocator_configured:
        _allocator_configured = _set_glibc_thresholds(
            _NO_CHURN_MMAP_THRESHOLD, _NO_CHURN_TRIM_THRESHOLD
        )
    return (
        "glibc mmap_threshold=32MiB trim_threshold=1GiB (no allocator churn)"
        if _allocator_configured
        else "default allocator"
    )


def _restore_thresholds() -> None:
    """The thresholds that hold outside a measurement: no-churn inside :func:`benchmark_allocator`
    or after :func:`configure_allocator`, glibc's defaults otherwise."""
    if _benchmark_depth or _allocator_configured:
        _set_glibc_thresholds(_NO_CHURN_MMAP_THRESHOLD, _NO_CHURN_TRIM_THRESHOLD)
    else:
        _set_glibc_thresholds(_GLIBC_DEFAULT_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)


@contextlib.contextmanager
def benchmark_allocator():
    """While active, glibc keeps freed buffers under 32 MiB and never trims its heap (no allocator
    churn between timed calls); on exit the thresholds in force before are back, and the freed
    memory the heap kept meanwhile goes back to the OS (else the next large allocations would be
    served from it, as under the no-churn setting). Nestable.

    glibc adapts its mmap threshold to the program until a threshold is set; after the first
    benchmark it stays at its initial 128 KiB.
    """
    global _benchmark_depth
    _benchmark_depth += 1
    try:
        _restore_thresholds()
        yield
    finally:
        _benchmark_depth -= 1
        _restore_thresholds()
        libc = _libc()
        if libc is not None and not _benchmark_depth and not _allocator_configured:
            libc.malloc_trim(0)


@contextlib.contextmanager
def _tracking_allocator():
    """While active, freed memory goes back to the OS and every buffer over 64 KiB is mmapped, so
    the resident set follows live tensors; the setting in force before is restored afterwards."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    _set_glibc_thresholds(_TRACKING_MMAP_THRESHOLD, 0)
    try:
        yield
    finally:
        _restore_thresholds()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_extra_rss_bytes(fn: Callable[[], object], repeats: int = 1) -> int:
    """Peak resident bytes that ``fn()`` adds on top of what the process holds before the call.

    Includes the call's temporaries and its output. Linux only. With ``repeats`` > 1, the lowest
    of that many calls: while measuring, freed memory goes back to the OS, so a reading counts at
    least what the call touches, and more when the allocator faults in pages around it (readings
    of one call jitter upwards by up to about 1 MiB, both for our ops and for their references).

    Raises:
        RuntimeError: the platform has no /proc/self/clear_refs (not Linux).
        ValueError: repeats < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return min(_one_peak_extra_rss_bytes(fn) for _ in range(repeats))


def _one_peak_extra_rss_bytes(fn: Callable[[], object]) -> int:
    gc.collect()
    with _tracking_allocator():
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


def _allocator_note() -> str:
    if _allocator_configured:
        return "glibc mmap_threshold=32MiB trim_threshold=1GiB (no allocator churn)"
    if _libc() is None:
        return "default allocator"
    return "glibc mmap_threshold=32MiB trim_threshold=1GiB while timing (no allocator churn)"


def _cpu_description() -> str:
    """The CPU's model name, family and widest x86 vector extension (from ``/proc/cpuinfo``; the
    model name alone does not tell the 2-core machines apart: Zen 3, 4 and 5 are all "AMD EPYC"),
    and the instruction set deeprebirth's kernels chose in this process."""
    cpu = platform.processor() or "unknown CPU"
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if not line.strip():
                    break  # the first processor's block only
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    flags = set(fields.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    details = [f"family {fields['cpu family']}"] if "cpu family" in fields else []
    details += [vector] if vector else []
    try:
        from deeprebirth.ops import direct_conv_isa

        details.append(f"deeprebirth kernels: {direct_conv_isa()}")
    except (ImportError, OSError, RuntimeError):  # the extension is not built
        pass
    return f"{cpu} ({', '.join(details)})" if details else cpu


def machine_line() -> str:
    """One line describing CPU (model, family, vector extension, the instruction set of
    deeprebirth's kernels), cores, threads, torch version and allocator setting."""
    return (
        f"{_cpu_description()} | {os.cpu_count()} cores | torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, {torch.__config__.parallel_info().splitlines()[-1].strip()}) "
        f"| {_allocator_note()}"
    )
