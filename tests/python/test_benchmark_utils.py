"""deeprebirth.utils.benchmark: peak memory follows live tensors even with the no-churn allocator."""

import platform

import pytest
import torch

from deeprebirth.utils.benchmark import configure_allocator, interleaved_timings, peak_extra_memory

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="VmHWM is Linux only")

MIB = 2**20


def test_peak_extra_memory_counts_each_call_again_after_timed_runs():
    size = 24 * MIB  # under the no-churn mmap threshold: freed, it stays in glibc's heap
    configure_allocator()

    def allocate():
        return torch.ones(size // 4)  # float32, written, so every page is resident

    interleaved_timings({"allocate": allocate}, repeats=3)  # leaves freed buffers cached
    for _ in range(2):
        peak = peak_extra_memory(allocate)
        assert 0.9 * size <= peak <= 1.3 * size, peak / MIB


def test_peak_extra_memory_with_repeats_reports_the_lowest_call():
    size = 8 * MIB
    configure_allocator()
    calls = []

    def allocate_less_each_time():  # 3, 2, then 1 x size
        calls.append(None)
        return torch.ones(max(1, 4 - len(calls)) * size // 4)

    assert 2.7 * size <= peak_extra_memory(allocate_less_each_time) <= 3.4 * size
    lowest = peak_extra_memory(allocate_less_each_time, repeats=2)  # calls 2 and 3
    assert 0.9 * size <= lowest <= 1.3 * size, lowest / MIB
    with pytest.raises(ValueError, match="repeats"):
        peak_extra_memory(allocate_less_each_time, repeats=0)
