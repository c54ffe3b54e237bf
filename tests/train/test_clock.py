"""cramming_simple/train/clock.py: the budget clock: its points, pauses, hours and step time."""

from __future__ import annotations

import math
import time

import pytest
from helpers.references import HOURS

from cramming_simple.config import ConfigError
from cramming_simple.train.clock import EVAL, BudgetClock
from cramming_simple.train.config import PretrainConfig
from cramming_simple.train.state import TrainState


def clock_config(budget_s: float, *overrides: str) -> PretrainConfig:
    """A run's typed config with a budget of `budget_s` seconds, logging every 5 s, checkpointing every 30 s."""
    hours = f"hours={budget_s / 3600!r}"
    return PretrainConfig.from_budget(
        "smoke", "preln", [hours, "impl.log_seconds=5", "impl.checkpoint_minutes=0.5", *overrides]
    )


def test_the_budget_clock_owns_its_points_and_pauses():
    cfg = clock_config(100.0, "impl.eval_minutes=0.4166666666666667", "impl.keep_at=[0.05,0.5]")
    assert (cfg.budget_s, cfg.eval_every_s) == (100.0, 25.0)
    clock = BudgetClock(cfg, spent=10.0)
    assert clock.keep == [0.5]  # 5 % of the budget was behind a resumed run already
    assert clock.next_log == 15.0 and clock.next_checkpoint == 40.0 and clock.next_eval == 25.0
    clock.agree(26.0)
    assert clock.p == 0.26 and clock.log_due() and clock.eval_due() and not clock.checkpoint_due()
    clock.logged()
    clock.evaluated()
    assert clock.next_log == 31.0 and clock.next_eval == 50.0  # the fixed eval grid, not 26 + 25
    assert clock.snapshot_due() is None
    clock.agree(50.0)
    assert clock.snapshot_due() == 0.5 and clock.snapshot_due() is None and clock.keep == []
    assert clock.spent_with(50.0) and not clock.spent_with(49.0)
    clock.start()
    with clock.paused():
        time.sleep(0.05)
        inside = clock.elapsed()
    time.sleep(0.02)
    assert inside - 10.0 < 0.04 and clock.elapsed() - 10.0 >= 0.02  # paused time is not budget time
    assert BudgetClock(clock_config(100.0, "impl.eval_minutes=0")).next_eval == math.inf  # only at start and end


def test_the_step_time_is_an_ema_of_the_ticks():
    clock = BudgetClock(clock_config(100.0))
    clock.start()
    assert clock.tick(0.0) == 0.0  # the first tick has nothing to measure
    time.sleep(0.02)
    first = clock.tick(0.0)
    assert first >= 0.02
    time.sleep(0.02)
    assert 0.9 + 0.1 * 0.02 <= clock.tick(1.0) < 0.95  # 0.9 x the old estimate + 0.1 x the new interval


def test_the_clock_reads_its_hours_from_the_config_and_alone_advances_the_timers(double):
    cfg = PretrainConfig.from_budget("smoke", "preln", [HOURS], reference=str(double["path"]))
    with pytest.raises(ConfigError, match="not calibrated yet"):
        BudgetClock.for_run(cfg, TrainState())
    cfg.reference.local_hours = 0.5  # as a calibration sets it
    state = TrainState(elapsed_s=10.0, eval_s=2.0)
    clock = BudgetClock.for_run(cfg, state)
    assert clock.budget_s == cfg.budget_s == 1800.0 and clock.spent == 10.0
    clock.start()
    with clock.paused(EVAL):
        time.sleep(0.05)
    with clock.paused():  # a checkpoint: outside the budget, not evaluation
        time.sleep(0.05)
    clock.stamp(state)
    assert state.eval_s == pytest.approx(2.05, abs=0.03) and 10.0 <= state.elapsed_s < 10.05
