"""Speed ratios you can quote: each block's speed relative to Pre-LN from paired per-round ratios, with a
bootstrap 95 % interval, and the rule that decides when the bench has timed enough rounds (docs/speed.md).

In round r every contender takes one step, close together in time, so the machine's drift hits them alike;
the paired ratio of round r is Pre-LN's step time over the block's (> 1: the block is faster). The estimate is
the median of the per-round ratios (robust to the odd round a neighbour's job disturbed), its interval the 2.5
and 97.5 percentiles of that median over rounds resampled with replacement (B replicates, a seeded generator).
The bench adds rounds until every interval's half-width is below the precision target, or the time cap.
"""

from __future__ import annotations

import numpy as np

from ..report.stats import Interval, bootstrap_index, percentile_interval

REPLICATES = 2000


def paired_ratios(base_times: list[float], times: list[float]) -> np.ndarray:
    """Per round: the baseline's step time over this row's (its speed relative to the baseline)."""
    n = min(len(base_times), len(times))
    return np.asarray(base_times[:n], float) / np.asarray(times[:n], float)


def median_interval(values: np.ndarray, seed: int = 0, replicates: int = REPLICATES) -> Interval:
    """The median of per-round values (ratios, rates) with its percentile bootstrap interval over rounds."""
    values = np.asarray(values, float)
    point = float(np.median(values))
    if values.size < 2:
        return Interval(point, float("nan"), float("nan"))
    index = bootstrap_index(values.size, replicates, np.random.default_rng(seed))
    return percentile_interval(np.median(values[index], axis=1), point)


def ratio_interval(ratios: np.ndarray, seed: int = 0, replicates: int = REPLICATES) -> Interval:
    """The median of the per-round ratios with its percentile bootstrap interval over rounds."""
    return median_interval(ratios, seed, replicates)


def half_width(interval: Interval) -> float:
    return (interval.high - interval.low) / 2 if np.isfinite(interval.high - interval.low) else float("inf")


def estimates(times: dict[str, list[float]], baseline: str, seed: int = 0) -> dict[str, dict]:
    """For every row: {"ratio", "low", "high", "half_width", "rounds"} against `baseline` (its own: exactly 1)."""
    out = {}
    for name, row_times in times.items():
        if name == baseline:
            out[name] = {"ratio": 1.0, "low": 1.0, "high": 1.0, "half_width": 0.0, "rounds": len(row_times)}
            continue
        interval = ratio_interval(paired_ratios(times[baseline], row_times), seed)
        out[name] = {
            "ratio": interval.diff,
            "low": interval.low,
            "high": interval.high,
            "half_width": half_width(interval),
            "rounds": len(row_times),
        }
    return out


def precise_enough(times: dict[str, list[float]], baseline: str, target: float, seed: int = 0) -> bool:
    """Whether every row's interval half-width is below `target` (in units of the ratio)."""
    return all(e["half_width"] < target for e in estimates(times, baseline, seed).values())
