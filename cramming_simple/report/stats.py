"""Which differences are real: Welch intervals over seeds, a paired bootstrap over validation examples, and
the steadiness of a run's throughput (docs/design.md).

Welch: the difference of two means with a 95 % interval from Student's t with Welch-Satterthwaite degrees of
freedom; it needs at least two values on each side. Paired bootstrap: the same resampled validation examples
for both sides, B replicates from a seeded generator, the metric recomputed on each and averaged over the
prediction sets (seeds) of a side; the interval is the 2.5 and 97.5 percentiles of the differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..glue.metrics import METRIC_FUNCTIONS

LEVEL = 0.95


def missing(value) -> bool:
    """A value a run does not have: None or NaN (pandas fills absent cells with either)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


@dataclass(frozen=True)
class Interval:
    diff: float  # mean of a minus mean of b
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        return self.low <= 0.0 <= self.high


def welch(a, b, level: float = LEVEL) -> Interval | None:
    """mean(a) - mean(b) with its Welch interval; None with fewer than two values on a side."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff, se = a.mean() - b.mean(), math.sqrt(va + vb)
    if se == 0.0:
        return Interval(float(diff), float(diff), float(diff))
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return Interval(float(diff), float(diff - half), float(diff + half))


def resampled_metric(metric: str, preds: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The metric on each bootstrap replicate: index (B, n) of example positions -> (B,)."""
    p, y = preds[index], labels[index]  # (B, n)
    if metric == "accuracy":
        return (p == y).mean(axis=1)
    if metric in ("f1", "matthews"):
        tp = ((p == 1) & (y == 1)).sum(1).astype(float)
        fp = ((p == 1) & (y != 1)).sum(1).astype(float)
        fn = ((p != 1) & (y == 1)).sum(1).astype(float)
        if metric == "f1":
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        if len(np.unique(np.concatenate([np.unique(preds), np.unique(labels)]))) <= 2:  # binary: from counts
            tn = p.shape[1] - tp - fp - fn
            with np.errstate(invalid="ignore", divide="ignore"):
                mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            return np.nan_to_num(mcc, nan=0.0)
    if metric == "spearman":
        p, y = stats.rankdata(p, axis=1), stats.rankdata(y, axis=1)
        metric = "pearson"
    if metric == "pearson":
        pc, yc = p - p.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (pc * yc).sum(1) / np.sqrt((pc**2).sum(1) * (yc**2).sum(1))
    fn_ = METRIC_FUNCTIONS[metric]  # any other metric: one replicate at a time
    return np.array([fn_(pi, yi) for pi, yi in zip(p, y)])


def bootstrap_index(n: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates, n) example positions drawn with replacement."""
    return rng.integers(0, n, size=(replicates, n))


def side_metric(metric: str, prediction_sets: list[np.ndarray], labels: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The metric on each replicate, averaged over a side's prediction sets (its seeds): (B,)."""
    return np.mean([resampled_metric(metric, p, labels, index) for p in prediction_sets], axis=0)


def percentile_interval(differences: np.ndarray, point: float, level: float = LEVEL) -> Interval:
    low, high = np.nanpercentile(differences, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(point), float(low), float(high))


def throughput(rates) -> dict[str, float | None]:
    """Steadiness of one run's tokens/s over its log windows, the first one (compile, warm-up) left out:
    {"median": median rate, "cv": standard deviation / mean, "windows": count}."""
    r = np.asarray([x for x in rates if x is not None and np.isfinite(x)], float)[1:]
    if r.size < 2:
        return {"median": float(r[0]) if r.size else None, "cv": None, "windows": int(r.size)}
    return {"median": float(np.median(r)), "cv": float(r.std(ddof=1) / r.mean()), "windows": int(r.size)}
