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
