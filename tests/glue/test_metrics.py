"""cramming_simple/glue/metrics.py: the metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cramming_simple.glue.metrics import compute


def test_metrics_match_hand_computed_values():
    preds, labels = np.array([1, 0, 1, 1, 0, 1]), np.array([1, 0, 0, 1, 0, 1])
    # TP 3, TN 2, FP 1, FN 0
    got = compute(["accuracy", "f1", "matthews"], preds, labels)
    assert got["accuracy"] == pytest.approx(5 / 6)
    assert got["f1"] == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    assert got["matthews"] == pytest.approx((3 * 2 - 1 * 0) / math.sqrt(4 * 3 * 3 * 2))
    got = compute(["pearson", "spearman"], np.array([1.0, 2.0, 3.0, 10.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert got["pearson"] == pytest.approx(14 / math.sqrt(50 * 5)) and got["spearman"] == pytest.approx(1.0)
