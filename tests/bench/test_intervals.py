"""cramming_simple/bench/intervals.py: paired speed ratios and their bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from cramming_simple.bench.intervals import estimates, paired_ratios, precise_enough, ratio_interval


def test_the_paired_ratio_and_its_interval_cover_the_true_ratio():
    rng = np.random.default_rng(0)
    drift = rng.uniform(1.0, 1.6, size=60)  # the machine's speed changes from round to round, for both alike
    base = list(0.10 * drift * rng.normal(1, 0.02, 60))
    block = list(0.10 / 1.25 * drift * rng.normal(1, 0.02, 60))
    assert np.median(paired_ratios(base, block)) == pytest.approx(1.25, rel=0.02)
    interval = ratio_interval(paired_ratios(base, block))
    assert interval.low < 1.25 < interval.high and interval.high - interval.low < 0.05
    # unpaired, the drift would swamp it: the ratio of the medians moves with the drift's draw
    few = ratio_interval(paired_ratios(base[:5], block[:5]))
    assert few.high - few.low > interval.high - interval.low  # fewer rounds, a wider interval
    e = estimates({"preln": base, "sas": block}, "preln")
    assert e["preln"] == {"ratio": 1.0, "low": 1.0, "high": 1.0, "half_width": 0.0, "rounds": 60}
    assert e["sas"]["low"] < e["sas"]["ratio"] < e["sas"]["high"] and e["sas"]["rounds"] == 60
    assert precise_enough({"preln": base, "sas": block}, "preln", 0.05)
    assert not precise_enough({"preln": base[:5], "sas": block[:5]}, "preln", 0.001)
    assert np.isnan(ratio_interval(paired_ratios(base[:1], block[:1])).low)  # one round: no interval
