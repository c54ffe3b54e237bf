"""The budget clock: training time spent, p = elapsed / budget, and the points on it where the trainer logs,
evaluates, keeps a snapshot or writes a checkpoint.

It carries over a resume (`spent`), starts at the first training step (compile time included) and pauses only
while something that is not training runs (`paused(kind)`: checkpoints, evaluation, snapshots), counting the time
spent outside the budget by kind. Under DDP every rank's own clock is read once per microbatch and the ranks agree
on the slowest (`agree`); every decision is taken on that agreed time, so all ranks log, evaluate and stop at the
same step.

It is the one owner of the run's timers: built from the run's config (`for_run`: the budget's seconds here, after a
reference budget's calibration) and its state, it alone advances them, and `stamp` writes them into the state that
checkpoints and summaries record (`elapsed_s`, `eval_s`).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import PretrainConfig
    from .state import TrainState

EVAL, CHECKPOINT = "eval", "checkpoint"  # kinds of time outside the budget (evaluation and snapshots; checkpoints)


class BudgetClock:
    def __init__(self, cfg: PretrainConfig, spent: float = 0.0, eval_s: float = 0.0):
        """A run's clock, from its typed config: the budget here (`cfg.budget_s`, the one place hours become
        seconds) and the points (`impl.log_seconds`, `checkpoint_minutes`, `eval_minutes`, `keep_at`); `spent` and
        `eval_s`: the training and evaluation seconds earlier sessions carried over."""
        impl = cfg.impl
        self.budget_s, self.spent, self.since = cfg.budget_s, spent, None
        self.outside = {EVAL: eval_s, CHECKPOINT: 0.0}  # seconds paused, by kind
        self.log_s, self.checkpoint_s, self.eval_every_s = (
            impl.log_seconds,
            impl.checkpoint_minutes * 60,
            cfg.eval_every_s,
        )
        self.agreed = spent  # the elapsed time every rank agreed on (from the checkpoint, then by each vote)
        self.next_log = spent + self.log_s
        self.next_checkpoint = spent + self.checkpoint_s
        self.next_eval = self.eval_point_after(spent)
        self.keep = [f for f in impl.keep_at if f * self.budget_s > spent]  # snapshot fractions still ahead
        self.last_tick: float | None = None
        self.ticks = 0  # microbatches timed in this session (its first ones compile)

    @classmethod
    def for_run(cls, cfg: PretrainConfig, state: TrainState) -> BudgetClock:
        """A run's clock, with what its state carries over from earlier sessions."""
        return cls(cfg, state.elapsed_s, state.eval_s)

    def position(self, state: TrainState, now: float | None = None) -> dict:
        """Where the run stands, as its metrics rows record it (now: this rank's elapsed seconds by default)."""
        now = self.elapsed() if now is None else now
        return {
            "microbatch_steps": state.microbatch_steps,
            "optimizer_steps": state.optimizer_steps,
            "tokens": state.tokens,
            "elapsed_s": round(now, 3),
            "p": round(self.fraction(now), 6),
        }

    # ------------------------------------------------------------------------------------------ the clock

    def start(self) -> None:
        self.since = time.perf_counter()

    def elapsed(self) -> float:
        """This rank's training seconds, all sessions."""
        return self.spent + (time.perf_counter() - self.since if self.since is not None else 0.0)

    @contextlib.contextmanager
    def paused(self, kind: str = CHECKPOINT):
        """Not training: the budget stands still; the time is counted as `kind` (EVAL or CHECKPOINT)."""
        self.spent, self.since = self.elapsed(), None
        started = time.perf_counter()
        try:
            yield
        finally:
            self.outside[kind] = self.outside.get(kind, 0.0) + time.perf_counter() - started
            self.start()

    def stamp(self, state: TrainState) -> None:
        """The run's timers into its state (for a checkpoint or a summary): training seconds, all sessions, and the
        seconds spent evaluating and keeping snapshots. Nothing else writes them."""
        state.elapsed_s = self.elapsed()
        state.eval_s = self.outside[EVAL]

    def tick(self, step_time_s: float, now: float | None = None) -> float:
        """Called once per microbatch (`now`: this rank's elapsed time, read once by the caller): the EMA of seconds
        per microbatch, updated with the time since the last tick (0.0: none yet). A resumed run carries it over,
        so that it never starts a step it cannot finish."""
        now = self.elapsed() if now is None else now
        self.ticks += 1
        if self.last_tick is not None:
            step_time_s = (
                now - self.last_tick if step_time_s == 0.0 else 0.9 * step_time_s + 0.1 * (now - self.last_tick)
            )
        self.last_tick = now
        return step_time_s

    def rewind(self, to: float) -> float:
        """Back to `to` training seconds (an earlier agreed time): the work since is dropped and redone after a
        resume, so it is charged once. Returns the seconds dropped."""
        dropped = self.elapsed() - to
        self.spent, self.agreed = to, to
        if self.since is not None:
            self.since = time.perf_counter()
        return dropped

    def agree(self, elapsed: float) -> None:
        """The time all ranks agreed on (the slowest rank's): every decision below reads it."""
        self.agreed = elapsed

    @property
    def p(self) -> float:
        """The budget fraction spent: learning rate and batch size are functions of it."""
        return self.agreed / self.budget_s

    def fraction(self, elapsed: float) -> float:
        return elapsed / self.budget_s

    def spent_with(self, step_s: float) -> bool:
        """Whether one more step of `step_s` seconds would not fit in the budget."""
        return self.agreed + step_s >= self.budget_s

    def steps_by_end(self, steps: int, step_s: float) -> int:
        """The microbatch steps a run at `steps` now will have made at p = 1, at `step_s` seconds per step."""
        return steps + max(0, math.floor((self.budget_s - self.agreed) / step_s))

    def p_after(self, more_steps: int, step_s: float) -> float:
        """The budget fraction `more_steps` steps of `step_s` seconds from now."""
        return (self.agreed + more_steps * step_s) / self.budget_s

    # ------------------------------------------------------------------------------------------ the points

    def log_due(self) -> bool:
        return self.agreed >= self.next_log

    def logged(self) -> None:
        self.next_log = self.agreed + self.log_s

    def eval_due(self) -> bool:
        return self.agreed >= self.next_eval

    def evaluated(self) -> None:
        self.next_eval = self.eval_point_after(self.agreed)  # the agreed time: every rank keeps the same point

    def eval_point_after(self, elapsed: float) -> float:
        """The next point of the fixed eval grid (every impl.eval_minutes of budget) after `elapsed`."""
        every = self.eval_every_s
        return (math.floor(elapsed / every) + 1) * every if every else math.inf

    def snapshot_due(self) -> float | None:
        """The budget fraction of a snapshot that is due now (taken off the list), or None."""
        if self.keep and self.agreed >= self.keep[0] * self.budget_s:
            return self.keep.pop(0)
        return None

    def checkpoint_due(self) -> bool:
        return self.agreed >= self.next_checkpoint

    def checkpointed(self) -> None:
        self.next_checkpoint = self.agreed + self.checkpoint_s
