"""cramming_simple/report/stats.py: intervals and resampled metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cramming_simple.glue.metrics import compute
from cramming_simple.report import stats


def test_welch_interval_matches_a_hand_computation():
    a, b = [80.0, 81.0, 85.0], [79.0, 79.5, 80.0, 80.5]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = np.mean(a) - np.mean(b)
    got = stats.welch(a, b)
    assert (got.diff, got.low, got.high) == pytest.approx((diff, diff - half, diff + half))
    assert got.within_noise and not stats.welch([90, 91, 92], [80, 81, 82]).within_noise
    assert stats.welch([80.0], b) is None


def test_resampled_metrics_equal_the_metric_on_each_resample():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    preds = np.where(rng.random(50) < 0.8, labels, 1 - labels)
    scores, gold = rng.random(50) * 5, rng.random(50) * 5
    index = stats.bootstrap_index(50, 20, np.random.default_rng(2))
    for metric in ("accuracy", "f1", "matthews"):
        expected = [compute([metric], preds[i], labels[i])[metric] for i in index]
        assert stats.resampled_metric(metric, preds, labels, index) == pytest.approx(expected)
    for metric in ("pearson", "spearman"):
        expected = [compute([metric], scores[i], gold[i])[metric] for i in index]
        assert stats.resampled_metric(metric, scores, gold, index) == pytest.approx(expected)
