"""deeprebirth.bench.timing: peak memory follows live tensors even with the no-churn allocator."""

import platform
from pathlib import Path

import pytest
import torch

from deeprebirth.bench import timing
from deeprebirth.bench.timing import configure_allocator, interleaved_timings, peak_extra_rss_bytes

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="VmHWM is Linux only")

MIB = 2**20


def test_peak_extra_rss_bytes_counts_each_call_again_after_timed_runs():
    size = 24 * MIB  # under the no-churn mmap threshold: freed, it stays in glibc's heap
    configure_allocator()

    def allocate():
        return torch.ones(size // 4)  # float32, written, so every page is resident

    interleaved_timings({"allocate": allocate}, repeats=3)  # leaves freed buffers cached
    for _ in range(2):
        peak = peak_extra_rss_bytes(allocate)
        assert 0.9 * size <= peak <= 1.3 * size, peak / MIB


def test_peak_extra_rss_bytes_with_repeats_reports_the_lowest_call():
    size = 8 * MIB
    configure_allocator()
    calls = []

    def allocate_less_each_time():  # 3, 2, then 1 x size
        calls.append(None)
        return torch.ones(max(1, 4 - len(calls)) * size // 4)

    assert 2.7 * size <= peak_extra_rss_bytes(allocate_less_each_time) <= 3.4 * size
    lowest = peak_extra_rss_bytes(allocate_less_each_time, repeats=2)  # calls 2 and 3
    assert 0.9 * size <= lowest <= 1.3 * size, lowest / MIB
    with pytest.raises(ValueError, match="repeats"):
        peak_extra_rss_bytes(allocate_less_each_time, repeats=0)


def test_benchmark_helpers_leave_the_process_allocator_alone():
    """Importing the helpers, timing and printing the machine line leave glibc serving a 1 MiB
    buffer by mmap as before (mallinfo2's count of mmapped blocks); only inside a timing does the
    no-churn setting keep it in the heap."""
    import subprocess
    import sys

    script = """
import ctypes, torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = Info
def mmapped_while_alive():
    before = libc.mallinfo2().hblks
    t = torch.empty(2**18)  # 1 MiB
    return libc.mallinfo2().hblks - before
from deeprebirth.bench import timing
seen = {}
timing.interleaved_timings({"a": lambda: seen.setdefault("inside", mmapped_while_alive())}, 1, 0)
timing.machine_line()
print(seen["inside"], mmapped_while_alive())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    inside, after = map(int, done.stdout.split())
    assert (inside, after) == (0, 1)


def test_interleaved_timings_warm_up_in_the_timed_rounds_mode():
    """Compiled functions guard on inference mode: a warm-up in another mode than the timed
    rounds would leave their recompilation inside the first timed call."""
    modes: list[bool] = []
    interleaved_timings(
        {"a": lambda: modes.append(torch.is_inference_mode_enabled())},
        repeats=3,
        warmup=2,
        min_sample_ms=0,
    )
    assert modes == [True] * 5


def test_interleaved_timings_average_back_to_back_calls_only_under_min_sample_ms(monkeypatch):
    """A sub-millisecond call is sampled as the mean of enough calls to fill ``min_sample_ms``
    (counted here); a longer call once. On a clock that each call advances by its own duration,
    so that the counts do not depend on how long the machine's sleeps overshoot (a loaded CI
    machine slept 0.2 ms for over 1 ms, and the short call was then timed alone)."""
    import time

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    counts = {"short": 0, "long": 0}

    def takes(name: str, seconds: float):
        def call():
            counts[name] += 1
            now[0] += seconds

        return call

    timings = interleaved_timings(
        {"short": takes("short", 3e-4), "long": takes("long", 3e-3)}, repeats=4, warmup=1
    )
    short, long = timings["short"], timings["long"]
    assert long.calls == 1 and counts["long"] == 1 + 4
    assert short.calls == 4 and counts["short"] == 1 + 4 * short.calls  # ceil(1 ms / 0.3 ms)
    assert short.samples == pytest.approx([0.3] * 4) and long.samples == pytest.approx([3.0] * 4)


def test_interleaved_timings_settle_times_each_variant_after_its_own_calls(monkeypatch):
    """A runtime's first call after another runtime's pays for that runtime's spinning threads
    (modelled here: 10 ms instead of 2 ms). Round robin charges every sample for it; with
    ``settle_ms`` each sample follows untimed calls of its own variant and reads the steady 2 ms."""
    import time

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    last = [None]

    def runtime(name: str):
        def call():
            now[0] += 2e-3 if last[0] == name else 10e-3
            last[0] = name

        return call

    variants = {"a": runtime("a"), "b": runtime("b")}
    unsettled = interleaved_timings(variants, repeats=3, warmup=1)
    settled = interleaved_timings(variants, repeats=3, warmup=1, settle_ms=5)
    assert unsettled["a"].samples == pytest.approx([10.0] * 3)
    assert settled["a"].samples == pytest.approx([2.0] * 3)
    assert settled["b"].samples == pytest.approx([2.0] * 3)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads /proc/cpuinfo")
def test_machine_line_names_the_vector_extension_and_kernel_isa():
    """The machines differ by vector extension under one model name ("AMD EPYC"): the line says
    which one this CPU has and which instruction set deeprebirth's kernels run."""
    from deeprebirth.ops import direct_conv_isa

    flags = next(
        line.split(":", 1)[1].split()
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("flags")
    )
    line = timing.machine_line()
    assert f"deeprebirth kernels: {direct_conv_isa()}" in line
    assert ("AVX-512" in line) == ("avx512f" in flags)
    assert "family " in line
