"""cramming_simple/train/projection.py: the projected steps, their cap and its warning."""

from __future__ import annotations

import pytest

from cramming_simple.train.clock import BudgetClock
from cramming_simple.train.config import PretrainConfig
from cramming_simple.train.projection import Projection
from cramming_simple.train.state import TrainState


def test_the_projection_warns_of_a_cap_once_and_says_how_often_the_data_will_be_read():
    cfg = PretrainConfig.from_budget("smoke", "preln", ["train.max_microbatches=500"])
    warned, said = [], []
    projection = Projection(cfg.train, 1_000, 1, warned.append, said.append)
    clock_cfg = PretrainConfig.from_budget("smoke", "preln", [f"hours={40 / 3600!r}", "impl.log_seconds=1"])
    clock, state = BudgetClock(clock_cfg), TrainState(microbatch_steps=100)
    clock.agree(3.125)  # 100 steps of 1/32 s: 36.875 s more make 1,180 steps more by p = 1
    state.projected_steps = projection(state, clock, 1 / 32, "a test rate")
    assert projection(state, clock, 1 / 32, "a test rate") == state.projected_steps  # the trainer records it
    assert state.projected_steps == 1_280 and len(warned) == 1
    # 400 steps more stop it at p = (3.125 + 12.5) / 40 = 0.39, its LR at 0.25 + p = 0.64 of its peak
    assert "will stop this run at about p = 0.39" in warned[0] and "0.64 of its peak" in warned[0]
    assert said == [
        "data: at this rate the run reads about 40,960 sequences, about 41.0 passes over its 1,000 training sequences"
    ]


def test_the_own_rate_projection_waits_for_the_steps_after_compile():
    """Seen on an H200: a compiled run's first 2 steps took 4.2 s, then 34 per second. A projection from the
    step-time EMA at the first log point said 6 steps for a run that made 605; it now takes the rate between two
    log points after the compiled steps."""
    cfg = PretrainConfig.from_budget("smoke", "preln", [])
    projection = Projection(cfg.train, 10**6, 1, [].append, [].append)
    clock_cfg = PretrainConfig.from_budget("smoke", "preln", [f"hours={21.6 / 3600!r}", "impl.log_seconds=4"])
    clock, state = BudgetClock(clock_cfg), TrainState()
    now = 0.0

    def train_until(log_at: float, step_s: float) -> None:
        nonlocal now
        while now + step_s <= log_at:
            now += step_s
            state.step_time_s = clock.tick(state.step_time_s, now)
            state.microbatch_steps += 1
            clock.agree(now)
        state.projected_steps = projection.after_log(state, clock, now) or state.projected_steps

    train_until(4.2, 2.1)  # compile: two steps, a log point past a tenth of the budget
    assert state.projected_steps is None
    train_until(8.2, 1 / 34)  # the first log point after compile: marked
    assert state.projected_steps is None
    train_until(12.2, 1 / 34)
    assert state.projected_steps == pytest.approx(state.microbatch_steps + (21.6 - now) * 34, rel=0.01)
