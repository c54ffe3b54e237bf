"""No silent cap (docs/recipe.md): once a rate is known, the microbatch steps a run will make by p = 1.

The first rate is a reference budget's calibration (Pre-LN's, before any step); the run's own comes after its
first minute of training (a tenth of a shorter budget): its steps per second between two log points after this
session's first steps, which compile. A cap that will end the run before
its budget (train.max_microbatches, cramming's 900,000 in the published profile; train.max_steps) is one warning
line, said once, with the budget fraction and learning rate at which it stops and how to avoid it; the stop itself
is recorded (`capped_at_p`). A run that will read its training rows more than once says how often.
"""

from __future__ import annotations

from typing import Callable

from ..runs import CAPPED
from .clock import BudgetClock
from .config import TrainConfig
from .schedules import lr_at
from .state import TrainState

CAPS = CAPPED  # train.* caps on microbatch steps (stop reasons of a completed run)
FIRST_MINUTE_S = 60.0  # the run's own rate is projected after this much training (or a tenth of a short budget)
# The rate is the steps per second between two log points after this session's first SETTLED_STEPS microbatches:
# those compile (seen on an H200: 2 steps in 4.2 s, then 34 per second), and a step-time EMA would carry them for
# a hundred steps more (a first projection from it said 6 steps for a run that made 605).
SETTLED_STEPS = 10


def cap_reached(train: TrainConfig, steps: int) -> str | None:
    """The cap (its train.* name) that `steps` microbatch steps have reached, or None. (Once per microbatch: a
    plain loop, no generator made per step.)"""
    for cap in CAPS:
        limit = getattr(train, cap)
        if limit is not None and steps >= limit:
            return cap
    return None


class Projection:
    """The trainer's projection of its steps at p = 1; `warn` and `say` are rank 0's warning and info lines."""

    def __init__(self, train: TrainConfig, train_rows: int, world: int, warn: Callable, say: Callable):
        self.train, self.train_rows, self.world, self.warn, self.say = train, train_rows, world, warn, say
        self.own_rate_seen = self.cap_warned = self.wrap_said = False
        self.settled: tuple[float, int] | None = None  # (seconds, steps) at the first log point after compile

    def after_log(self, state: TrainState, clock: BudgetClock, now: float) -> int | None:
        """At a log point: mark the first one after this session's compile; at the first after that and after the
        first minute, project the run at its rate between the two (the steps by p = 1; None: no projection yet)."""
        if self.own_rate_seen or clock.ticks < SETTLED_STEPS:
            return None
        if self.settled is None:
            self.settled = (now, state.microbatch_steps)
            return None
        since, steps = self.settled
        if now >= min(FIRST_MINUTE_S, clock.budget_s / 10) and state.microbatch_steps > steps:
            self.own_rate_seen = True
            step_s = (now - since) / (state.microbatch_steps - steps)
            return self(state, clock, step_s, f"its own rate from {since:.0f} s to {now:.0f} s of training")
        return None

    def __call__(self, state: TrainState, clock: BudgetClock, step_s: float, rate_from: str) -> int | None:
        """The microbatch steps by p = 1 at `step_s` seconds per step (the trainer records them as
        `state.projected_steps`); warns of a cap once, says how often the data will be read."""
        if not step_s > 0:  # no step timed yet
            return None
        projected = clock.steps_by_end(state.microbatch_steps, step_s)
        caps = sorted((getattr(self.train, c), c) for c in CAPS if getattr(self.train, c) is not None)
        if caps and caps[0][0] < projected and not self.cap_warned:
            self.cap_warned = True
            limit, cap = caps[0]
            p = clock.p_after(limit - state.microbatch_steps, step_s)
            end = self.train.ramp_end
            ramp = "done" if p >= end else f"unfinished (it ends at p = {end:g})"
            self.warn(
                f"train.{cap}={limit:,} will stop this run at about p = {p:.2f}: it would make about "
                f"{projected:,} microbatch steps by p = 1 ({rate_from}, {1 / step_s:.3g} steps/s), and at "
                f"the stop its learning rate will still be {lr_at(p, 1.0):.2f} of its peak, never annealed, and the "
                f"batch ramp {ramp}. To train the whole budget: a reference budget (--reference NAME, docs/recipe.md) "
                f"or train.{cap}=null"
            )
        sequences = projected * self.train.microbatch * self.world
        if sequences > self.train_rows and not self.wrap_said:
            self.wrap_said = True
            self.say(
                f"data: at this rate the run reads about {sequences:,} sequences, about "
                f"{sequences / self.train_rows:.1f} passes over its {self.train_rows:,} training sequences"
            )
        return projected
