"""Schedules as pure functions of training progress p = elapsed training time / budget (docs/recipe.md)."""

from __future__ import annotations

import math

RAMPS = ("linear", "cramming")  # train.ramp: ours, and the one the published runs used (docs/recipe.md)


def clamp01(p: float) -> float:
    return min(max(p, 0.0), 1.0)


def lr_at(p: float, peak: float) -> float:
    """The budget triangle: peak * min(0.25 + p, 4 (1 - p)); 0.25 peak at p = 0, peak at 0.75, 0 at 1."""
    p = clamp01(p)
    return peak * min(0.25 + p, 4.0 * (1.0 - p))


def batch_at(p: float, microbatch: int, batch_max: int, ramp_end: float = 0.6, ramp: str = "linear") -> int:
    """Effective batch, never below one microbatch.

    linear: from one microbatch at p = 0 linearly up to batch_max at p = ramp_end, then flat; a multiple of
      `microbatch` (rounded down).
    cramming: microbatch * (floor(p * batch_max / (ramp_end * microbatch)) + 1), capped at batch_max: one
      microbatch more every ramp_end * microbatch / batch_max of the budget, so the cap is reached slightly
      before p = ramp_end (cramming's formula, with which the published numbers were trained).
    """
    p = clamp01(p)
    if ramp == "cramming":
        return min(batch_max, microbatch * (math.floor(p * batch_max / (ramp_end * microbatch)) + 1))
    target = microbatch + (batch_max - microbatch) * min(p / ramp_end, 1.0)
    return max(microbatch, int(target // microbatch) * microbatch)


def accumulation_at(
    p: float, microbatch: int, batch_max: int, ramp_end: float = 0.6, world_size: int = 1, ramp: str = "linear"
) -> int:
    """Microbatches per optimiser step on each rank; the ramp counts the global batch over all ranks."""
    global_micro = microbatch * world_size
    return max(1, batch_at(p, global_micro, max(batch_max, global_micro), ramp_end, ramp) // global_micro)


def microbatches_per_update(
    microbatch: int, batch_max: int, ramp_end: float = 0.6, ramp: str = "linear", points: int = 10_000
) -> int:
    """A run's microbatches per optimiser update over its whole budget (one rank, a steady microbatch rate):
    1 / the mean over p of 1 / accumulation_at(p), rounded. About 20 for the 24h budget, whose ramp takes the
    accumulation from 1 to 64: the calibration times updates at this rate, so that they weigh in as over a run."""
    updates = sum(
        1.0 / accumulation_at((i + 0.5) / points, microbatch, batch_max, ramp_end, 1, ramp) for i in range(points)
    )
    return max(1, round(points / updates))
