"""Schedules as pure functions of training progress p = elapsed training time / budget (docs/recipe.md)."""

from __future__ import annotations


def clamp01(p: float) -> float:
    return min(max(p, 0.0), 1.0)


def lr_at(p: float, peak: float) -> float:
    """The budget triangle: peak * min(0.25 + p, 4 (1 - p)); 0.25 peak at p = 0, peak at 0.75, 0 at 1."""
    p = clamp01(p)
    return peak * min(0.25 + p, 4.0 * (1.0 - p))


def batch_at(p: float, microbatch: int, batch_max: int, ramp_end: float = 0.6) -> int:
    """Effective batch: from one microbatch at p = 0 linearly up to batch_max at p = ramp_end, then flat.

    Always a multiple of `microbatch` (rounded down), never below one microbatch.
    """
    target = microbatch + (batch_max - microbatch) * min(clamp01(p) / ramp_end, 1.0)
    return max(microbatch, int(target // microbatch) * microbatch)


def accumulation_at(p: float, microbatch: int, batch_max: int, ramp_end: float = 0.6, world_size: int = 1) -> int:
    """Microbatches per optimiser step on each rank; the ramp counts the global batch over all ranks."""
    global_micro = microbatch * world_size
    return batch_at(p, global_micro, max(batch_max, global_micro), ramp_end) // global_micro
