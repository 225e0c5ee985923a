"""Speed-ups of variants timed in the same rounds: the median of the per-round ratios."""

import statistics
import time

import pytest

from deeprebirth.bench import roofline, tables
from deeprebirth.bench.timing import Timing, interleaved_timings, paired_ratio, speed_ratio


def _drifting_machine_timings(monkeypatch) -> dict[str, Timing]:
    """``slow`` costs 3x ``fast`` in every round, on a clock that a machine changing speed
    between rounds (3x slower in the first two) advances, and one ``fast`` call hiccups."""
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    speed = iter([1.0, 3.0, 3.0, 1.0, 1.0, 1.0])  # warm-up round, then five timed rounds
    hiccups = iter([0.0, 0.0, 0.0, 0.0, 1.5e-3, 0.0])
    factor = [1.0]

    def slow():
        factor[0] = next(speed)
        now[0] += 3e-3 * factor[0]

    def fast():
        now[0] += 1e-3 * factor[0] + next(hiccups)

    return interleaved_timings({"slow": slow, "fast": fast}, repeats=5, warmup=1, min_sample_ms=0)


def test_paired_ratio_is_the_median_of_per_round_ratios_on_a_drifting_machine(monkeypatch):
    timings = _drifting_machine_timings(monkeypatch)
    slow, fast = timings["slow"], timings["fast"]
    assert slow.samples == pytest.approx([9.0, 9.0, 3.0, 3.0, 3.0])
    assert fast.samples == pytest.approx([3.0, 3.0, 1.0, 2.5, 1.0])
    per_round = [a / b for a, b in zip(slow.samples, fast.samples, strict=True)]
    assert paired_ratio(slow, fast) == pytest.approx(statistics.median(per_round)) == 3.0
    # the ratio of the medians mixes the machine's two states and reads 1.2x
    assert slow.median / fast.median == pytest.approx(1.2)


def test_timings_of_one_call_share_their_rounds_and_speed_ratio_pairs_only_those(monkeypatch):
    first = _drifting_machine_timings(monkeypatch)
    second = _drifting_machine_timings(monkeypatch)
    assert first["slow"].rounds is not None
    assert first["slow"].rounds == first["fast"].rounds != second["fast"].rounds
    assert speed_ratio(first["slow"], first["fast"]) == pytest.approx(3.0)
    assert tables.ratio(first["slow"], first["fast"]) == pytest.approx(3.0)
    # timings from two calls are not paired round by round: the ratio of their medians
    across = speed_ratio(first["slow"], second["fast"])
    assert across == pytest.approx(first["slow"].median / second["fast"].median)


def test_share_of_peak_pairs_each_round_with_the_peaks_round(monkeypatch):
    timings = _drifting_machine_timings(monkeypatch)
    model, peak = timings["slow"], timings["fast"]
    flops, peak_flops = 10**9, 4 * 10**9
    shares = [
        (flops / m) / (peak_flops / p) for m, p in zip(model.samples, peak.samples, strict=True)
    ]
    share = roofline.share_of_peak(model, flops, peak, peak_flops)
    assert share == pytest.approx(statistics.median(shares))
    unpaired = roofline.share_of_peak(Timing(model.samples), flops, peak, peak_flops)
    assert unpaired == pytest.approx((flops / model.median) / (peak_flops / peak.median))


def test_paired_ratio_refuses_timings_of_different_rounds():
    with pytest.raises(ValueError, match="one sample per round"):
        paired_ratio(Timing((1.0, 2.0)), Timing((1.0, 2.0, 3.0)))
