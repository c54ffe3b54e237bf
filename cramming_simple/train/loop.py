"""Budgeted MLM pretraining: spend the wall-clock budget on training steps, stop exactly at it, lose nothing.

The budget clock starts at the first training step (compile time included) and pauses only while a checkpoint
is written, the model evaluated or a snapshot kept. Learning rate and batch size are pure functions of
p = elapsed / budget, decided at the start of every optimiser step. The hot loop makes no host-device syncs except
at log points (every `impl.log_seconds`), where the loss is read and checked for NaN/inf. Resuming restores
weights, optimiser, counters, elapsed time and the data position; work after the last checkpoint of a killed run
is redone, and its time is not charged twice. A damaged `checkpoint.pt` falls back to `checkpoint.prev.pt`.

The trainer delegates (torchtitan's shape): `TrainStep` runs forward, backward, clipping and the optimiser step;
`BudgetClock` owns p, the run's timers and the points where the loop logs, evaluates, keeps snapshots and
checkpoints; `Checkpointer` what a checkpoint holds, saving, restoring and the fallback; `MetricsLog` the rows,
trackers and progress; `Evaluator` measures the held-out loss and diagnostics (the trainer records them: an
`eval` row in metrics.jsonl, a row in diagnostics.jsonl); `Projection` the steps at p = 1 and the caps;
`folder` the run folder and its lock; `budget` a reference budget's calibration, before the clock starts.

One process owns a run folder: rank 0 holds `runs/<name>/.lock` (flock) for the whole run, and a second start on
the same folder exits with code 2 naming the holder. A full disk stops the run with exit code 5 and
`stop_reason: "disk_full"`, the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import signal
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import to_yaml
from ..data import (
    Prefetcher,
)
from ..errors import EXIT_DISK_FULL, DiskFullError
from ..folders import save_model
from ..model import MaskedLM, count_params
from ..optim import make_optimizer
from ..profiles import profile_of
from ..runs import CHECKPOINT, COMPLETE, CONFIG, MODEL, SUMMARY, read_summary, snapshot_name
from ..runtime import (
    atomic_write_bytes,
    autocast_dtype,
    device_name,
    die_with_parent,
    environment,
    now_iso,
    pick_device,
    seed_everything,
    slurm_job,
)
from .budget import calibrated, check_one_gpu, moved_device
from .checkpoint import Checkpointer
from .clock import EVAL, BudgetClock
from .config import PretrainConfig
from .distributed import Dist, RankFailed, init_distributed
from .evaluate import Evaluator
from .folder import check_folder, move_aside, run_lock
from .inputs import RunData
from .metrics import LogWindow, MetricsLog, trim_logs
from .projection import Projection, cap_reached
from .schedules import accumulation_at, lr_at
from .state import StopSignals, TrainState
from .step import TrainStep
from .summary import run_summary

log = logging.getLogger(__name__)


def pretrain(
    cfg: PretrainConfig,
    runs_dir: str | Path = "runs",
    resume: bool = False,
    restart: bool = False,
    calibration_dir: str | Path | None = None,
    restart_unresumable: bool = False,
) -> dict:
    """Run (or resume) one pretraining run into `runs_dir/cfg.name`; returns its summary.

    The folder is the run: whatever name its config.yaml stores, `runs_dir/cfg.name` is the folder that trains.
    `restart`: an existing folder is moved aside (runs_dir/.restarted/) first, never deleted; `restart_unresumable`
    (--resume-or-restart): only one whose run stopped before its first checkpoint. A reference budget
    not calibrated yet (a new run) is calibrated first, or read from `calibration_dir` (train.budget)."""
    run_dir = Path(runs_dir) / cfg.name
    check_one_gpu(cfg)
    device = pick_device(cfg.impl.device)
    if cfg.impl.threads:
        torch.set_num_threads(cfg.impl.threads)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # torchrun starts ranks in sessions of their own: if the launcher is killed they would train on, holding
        # the GPUs and the run folder. SIGTERM instead: they write a checkpoint together and exit (code 4).
        die_with_parent(signal.SIGTERM)
    dist = init_distributed(device)
    try:
        if restart or restart_unresumable:
            move_aside(run_dir, dist, only_unresumable=not restart)
        with run_lock(run_dir, dist, cfg.impl.lock):
            error = None
            if dist.main:
                try:
                    check_folder(run_dir, resume)
                except Exception as err:  # noqa: BLE001 - raised on every rank by fail_together
                    error = err
            dist.fail_together(error)
            summary = read_summary(run_dir) if (run_dir / SUMMARY).exists() else None
            if summary and summary.get("completed") and summary.get("amendments", []) == cfg.amendments:
                log.info(f"{run_dir} is complete; nothing to do")  # (an --extend-budget goes on)
                return summary
            if cfg.reference is not None and not cfg.reference.calibrated:  # before the clock: not budget time
                cfg = calibrated(cfg, device, calibration_dir)
            with StopSignals() as signals:
                summary = Trainer(cfg, run_dir, device, dist, signals).run()
            dist.barrier()  # all ranks leave together (rank 0 was still publishing the model and summary)
            return summary
    finally:
        dist.close()


class Trainer:
    """One pretraining run in one process (one rank): builds the data, model and components, then `run()`."""

    def __init__(self, cfg: PretrainConfig, run_dir: Path, device: torch.device, dist: Dist, signals: StopSignals):
        self.cfg, self.run_dir, self.device, self.dist, self.signals = cfg, run_dir, device, dist, signals
        # rank 0 speaks for the run; the others stay quiet
        self.log = log.info if dist.main else (lambda *a, **k: None)
        self.warn = log.warning if dist.main else (lambda *a, **k: None)
        self.data = RunData(cfg, run_dir, dist, device)  # first: preparation is not budget time
        # the embedding's padding index is the prepared tokenizer's pad: the arch is built with it
        cfg = self.cfg = replace(cfg, arch=replace(cfg.arch, pad_token_id=self.data.pad_token_id))
        self.tokenizer, self.data_identity = self.data.tokenizer, self.data.identity
        seed_everything(cfg.train.seed)
        self.model = MaskedLM(cfg.arch, cfg.block).to(device)
        t = cfg.train
        self.optimizer = make_optimizer(
            self.model, lr_at(0.0, t.lr), t.weight_decay, tuple(t.betas), t.eps, device, t.decay_rule
        )
        self.dtype = autocast_dtype(device, cfg.impl.precision)
        scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.checkpointer = Checkpointer(
            run_dir,
            dist,
            {"model": self.model, "optimizer": self.optimizer, "scaler": scaler},
            {"block": cfg.block, "data": self.data_identity},
            state_type=TrainState,
            check=self.data.check_checkpoint,
            warn=self.warn,
        )
        self.state = self.resume()
        self.state.trains_on(device_name(device), (slurm_job() or {}).get("node") or platform.node())
        moved = moved_device(cfg, device_name(device))  # a requeue onto another GPU model keeps the hours
        if moved:
            self.warn(moved)
        # Execution concerns on the built (and restored) model: DDP, then compile (eager if compiling fails).
        ddp = None
        if dist.world > 1:
            ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.step = TrainStep(
            self.model, self.optimizer, device, self.dtype, t.grad_clip, cfg.impl.compile, ddp=ddp, scaler=scaler
        )
        self.clock: BudgetClock | None = None  # from begin(): a full disk before it keeps the checkpoint's time

    # ------------------------------------------------------------------------------------------ state

    def resume(self) -> TrainState:
        """The counters of the checkpoint on disk (fresh ones without one); summary.json and the logs are
        brought back to where the checkpoint stands (work after it is redone, its time not charged twice)."""
        ckpt = self.checkpointer.restore()
        if ckpt is None:
            return TrainState()
        state = ckpt["state"]
        if self.dist.main:
            if isinstance(ckpt.get("summary"), dict):  # summary.json as it was written with the checkpoint
                self.checkpointer.write_summary({**ckpt["summary"], "name": self.cfg.name})
            trim_logs(self.run_dir, state.microbatch_steps)
        self.log(
            f"resuming {self.run_dir} at microbatch step {state.microbatch_steps} "
            f"({state.elapsed_s / 3600:.3f} h spent)"
        )
        return state

    def checkpoint(self, stop_reason: str | None = None) -> None:
        """Every rank's clock is paused by the caller; rank 0 writes the checkpoint and the summary with it."""
        summary = {**self.summary(completed=False, stop_reason=stop_reason), "checkpoint": CHECKPOINT}
        self.checkpointer.save(asdict(self.state), summary)

    # ------------------------------------------------------------------------------------------ loop

    def run(self) -> dict:
        """Train until the budget is spent (or a stop); a full disk ends the run with stop_reason "disk_full"."""
        self.started_at = now_iso()
        self.metrics: MetricsLog | None = None
        try:
            return self.train()
        except DiskFullError:
            if self.clock is not None:  # before begin(): the checkpoint's time stands
                self.clock.stamp(self.state)
            if self.dist.main:
                with contextlib.suppress(Exception):  # a small file: it may still fit
                    self.write_summary(completed=False, stop_reason="disk_full")
            raise
        finally:
            if self.metrics is not None:
                self.metrics.close_trackers()

    def train(self) -> dict:
        self.begin()
        while True:
            stop = self.decide_stop()
            if stop:
                break
            if self.accumulated == 0:  # schedules: pure functions of p, decided once per optimiser step
                self.set_schedules()
            elif self.cfg.train.ramp == "cramming":  # cramming's LambdaLR stepped every microbatch
                self.set_lr(self.clock.p)
            self.microbatch(next(self.prefetch))
            if self.accumulated == self.n_acc:
                self.optimizer_step()
            if self.clock.log_due():  # the same decision on every rank: the clock's time is agreed
                self.log_window()
            if self.accumulated == 0 and not self.nonfinite:  # between optimiser steps, the same on every rank
                self.between_updates()
        return self.finish(stop)

    def between_updates(self) -> None:
        """What the budget clock says is due between two optimiser steps: eval, a snapshot, a checkpoint."""
        if self.clock.eval_due():
            self.evaluate()
        while (fraction := self.clock.snapshot_due()) is not None:  # one step can pass several fractions
            self.keep_snapshot(fraction)
        if self.clock.checkpoint_due():
            self.maybe_checkpoint()

    def begin(self) -> None:
        cfg, st, spec = self.cfg, self.state, self.model.encoder.spec
        if self.dist.main:
            atomic_write_bytes(self.run_dir / CONFIG, to_yaml(cfg).encode())
        self.prefetch = Prefetcher(self.data.stream, st.microbatch_steps, self.device, cfg.impl.prefetch)
        self.metrics = MetricsLog(self.run_dir, self.dist, cfg, st.microbatch_steps, spec.name)
        self.evaluator, self.disk_full = Evaluator(self.data.heldout, self.dist), None
        self.log(
            f"pretraining {spec.title} [{cfg.block}] ({count_params(self.model)['params'] / 1e6:.1f}M params) for "
            f"{cfg.local_hours:.4g} h on {environment(self.device)['device']} x{self.dist.world}, "
            f"{'compiled' if self.step.compiled else 'eager'}, data {self.data.prepared.path} "
            f"({len(self.data.stream.data)} sequences), profile {profile_of('pretrain', asdict(cfg))}"
        )
        self.window = LogWindow(self.device)
        self.clock = BudgetClock.for_run(cfg, st)
        self.accumulated, self.n_acc, self.lr = 0, 1, 0.0
        self.boundary_at = self.clock.agreed  # the agreed time at the last optimiser-step boundary
        self.nonfinite = False
        self.projection = Projection(cfg.train, self.data.split.train_size, self.dist.world, self.warn, self.log)
        if cfg.reference is not None:  # what the budget became; the calibration's rate projects before any step
            self.log(f"budget: {cfg.reference.line(cfg.hours)}")
            rate = 1.0 / cfg.reference.local_rate
            st.projected_steps = self.projection(st, self.clock, rate, "the calibration's Pre-LN rate")
        self.clock.start()
        if st.microbatch_steps == 0:  # the model at init: the first point of every eval curve and diagnostics plot
            with self.clock.paused():  # and a checkpoint: a kill before the first interval resumes, not restarts
                self.checkpoint()
            self.evaluate()
        self.window.start = self.clock.elapsed()

    def decide_stop(self) -> str | None:
        """One vote per microbatch: every rank sees the same elapsed time (the slowest rank's) and the same stop
        decision. The budget stops a run before a step it could not finish (step time: an EMA)."""
        st, now = self.state, self.clock.elapsed()
        st.step_time_s = self.clock.tick(st.step_time_s, now)
        # Each rank's step-time EMA is its own clock's: the stop rule uses the largest, so that no rank stops a
        # step before the others (it would wait in the final eval's all-reduce while they train on).
        elapsed, step_s, (preempt, bad, no_space) = self.dist.vote(
            now,
            st.step_time_s,
            self.signals.requested,
            self.nonfinite,
            self.disk_full is not None,
        )
        self.clock.agree(elapsed)
        if self.accumulated == 0:
            self.boundary_at = elapsed
        if no_space:
            raise self.disk_full or RankFailed(EXIT_DISK_FULL)
        if bad:
            return "nonfinite_loss"
        if self.clock.spent_with(step_s):
            return "budget"
        if preempt:
            self.rewind_to_boundary()
            return "preempted"
        cap = cap_reached(self.cfg.train, st.microbatch_steps)
        if cap:
            st.capped_at_p = round(self.clock.p, 6)  # recorded: the report marks a capped run
        return cap

    def rewind_to_boundary(self) -> None:
        """A stop signal in the middle of an optimiser step (up to batch_max / microbatch microbatches at the end of
        the ramp, more than a Slurm grace time allows): stop at this microbatch. The weights change only at a
        boundary, so the checkpoint is the last boundary's state with the data position and the budget's clock
        rewound to it; the dropped microbatches are redone after the resume, and charged once."""
        dropped = self.accumulated
        if not dropped:
            return
        st = self.state
        st.microbatch_steps -= dropped
        st.tokens -= dropped * self.cfg.train.microbatch * self.cfg.arch.seq_len * self.dist.world
        self.accumulated = 0
        self.optimizer.zero_grad(set_to_none=True)
        seconds = self.clock.rewind(self.boundary_at)
        self.window.start = min(self.window.start, self.boundary_at)  # the last row's rate over a positive time
        self.log(
            f"stopping between microbatches: the {dropped} microbatch(es) of the unfinished optimiser step "
            f"({seconds:.1f} s) are dropped and redone on resume"
        )

    def set_schedules(self) -> None:
        train, p = self.cfg.train, self.clock.p
        self.n_acc = accumulation_at(p, train.microbatch, train.batch_max, train.ramp_end, self.dist.world, train.ramp)
        self.set_lr(p)

    def set_lr(self, p: float) -> None:
        self.lr = lr_at(p, self.cfg.train.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def microbatch(self, batch: dict) -> None:
        """Forward and backward of one microbatch; DDP all-reduces only on the last one of an optimiser step."""
        loss = self.step.backward(batch, 1.0 / self.n_acc, sync=self.accumulated == self.n_acc - 1)
        tokens = self.cfg.train.microbatch * self.cfg.arch.seq_len * self.dist.world
        self.window.add_microbatch(loss, tokens)
        self.accumulated += 1
        self.state.microbatch_steps += 1
        self.state.tokens += tokens

    def optimizer_step(self) -> None:
        self.window.add_update(self.step.update())
        self.state.optimizer_steps += 1
        self.accumulated = 0

    def log_window(self) -> None:
        """The one host sync of a log interval: loss and gradient norm (mean over ranks), a metrics row."""
        cfg, st, window = self.cfg, self.state, self.window
        loss_total, norm_total = window.totals(self.dist)
        mean_loss = loss_total / window.steps
        self.nonfinite = not (math.isfinite(loss_total) and math.isfinite(norm_total))
        if not self.nonfinite:
            st.last_loss, st.last_loss_steps = mean_loss, window.steps
        now = self.clock.elapsed()
        seconds = max(now - window.start, 1e-9)
        row = {
            **self.clock.position(st, now),
            "lr": self.lr,
            "batch_size": self.n_acc * cfg.train.microbatch * self.dist.world,
            "loss": mean_loss,
            "grad_norm": norm_total / window.updates if window.updates else None,
            "tokens_per_s": window.tokens / seconds,
        }
        self.record(row)
        steps_s, tok_s = round(window.steps / seconds, 2), round(row["tokens_per_s"])
        self.metrics.show(now, loss=mean_loss, step=st.microbatch_steps, steps_s=steps_s, tok_s=tok_s)
        window.reset(now)
        self.clock.logged()
        st.projected_steps = self.projection.after_log(st, self.clock, now) or st.projected_steps

    def evaluate(self) -> None:
        """An eval point, the clock paused (it counts the time): the evaluator measures, the trainer records."""
        if self.evaluator.heldout is None:
            return
        with self.clock.paused(EVAL):
            result = self.evaluator(self.model, self.clock.position(self.state))
            self.state.eval_loss, self.state.eval_step = result.loss, result.step
            if result.diagnostics is not None:  # rank 0
                tracked = {"eval_loss": result.loss, "eval_s": result.seconds}
                self.record(result.row(), tracked, kind="eval", diagnostics={**result.at, **result.diagnostics})
        self.clock.evaluated()

    def record(self, row: dict, tracked: dict | None = None, **kwargs) -> None:
        """A metrics row (rank 0). A full disk is held for the next stop vote: every rank stops together."""
        try:
            self.metrics.write(row, tracked, **kwargs)
        except DiskFullError as err:
            self.disk_full = err

    def maybe_checkpoint(self) -> None:
        """Never a checkpoint with a non-finite loss or gradient behind it: a sync every few minutes, averaged
        over ranks, so that a NaN on any rank stops all of them alike."""
        self.nonfinite = not self.window.finite(self.dist)
        if self.nonfinite:
            return
        with self.clock.paused():
            self.clock.stamp(self.state)
            self.checkpoint()
        self.clock.checkpointed()

    def keep_snapshot(self, fraction: float) -> None:
        """model@<fraction>/ (rank 0), clock paused: the model as it stands at that fraction of the budget."""
        st, name = self.state, snapshot_name(fraction)
        with self.clock.paused(EVAL):  # counted with evaluation (state.eval_s)
            if self.dist.main:
                save_model(self.model, self.run_dir / name, self.tokenizer)
            st.snapshots[f"{fraction:.2f}"] = {
                "dir": name,
                "microbatch_steps": st.microbatch_steps,
                "elapsed_s": round(self.clock.elapsed(), 3),
            }
        self.log(f"kept {self.run_dir / name} at {fraction:.0%} of the budget")

    def finish(self, stop: str) -> dict:
        """The steps since the last log join the final loss; a last checkpoint, the model, the summary."""
        st, dist = self.state, self.dist
        self.prefetch.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.clock.stamp(st)
        if stop != "nonfinite_loss" and self.window.steps:  # the same count on every rank
            stop = self.close_window(stop)
        completed = stop in COMPLETE
        if completed and st.eval_step != st.optimizer_steps:
            self.evaluate()  # the final model's held-out loss (clock paused, as always)
            self.clock.stamp(st)
        if stop == "nonfinite_loss":
            self.warn(
                f"non-finite loss or gradient: stopped at microbatch step {st.microbatch_steps}; the last good "
                "checkpoint is kept"
            )
        else:
            self.checkpoint(stop_reason=None if completed else stop)  # completed only once model/ is published
            if completed and dist.main:
                save_model(self.model, self.run_dir / MODEL, self.tokenizer)
        summary = self.write_summary(completed, stop) if dist.main else self.summary(completed, stop)
        final_loss = float("nan") if st.last_loss is None else st.last_loss
        self.metrics.show(st.elapsed_s)
        self.metrics.close(loss=final_loss, step=st.microbatch_steps)
        self.log(
            f"{stop}: {st.microbatch_steps} microbatch steps, {st.tokens / 1e6:.1f}M tokens in "
            f"{st.elapsed_s / 3600:.3f} h; final loss {final_loss:.4f}"
            + (f", held-out loss {st.eval_loss:.4f}" if st.eval_loss is not None else "")
            + f"; {self.run_dir}"
        )
        return summary

    def close_window(self, stop: str) -> str:
        """The microbatches since the last log join the final loss; a non-finite one turns the stop into that."""
        st = self.state
        loss_total, norm_total = self.window.totals(self.dist)
        if not (math.isfinite(loss_total) and math.isfinite(norm_total)):
            return "nonfinite_loss"
        if self.window.steps >= st.last_loss_steps:
            st.last_loss, st.last_loss_steps = loss_total / self.window.steps, self.window.steps
        else:  # a short tail after the last log joins that window: never a loss over a handful of microbatches
            n = st.last_loss_steps + self.window.steps
            st.last_loss, st.last_loss_steps = (st.last_loss * st.last_loss_steps + loss_total) / n, n
        return stop

    # ------------------------------------------------------------------------------------------ summary

    def summary(self, completed: bool, stop_reason: str | None) -> dict:
        return run_summary(self, completed, stop_reason)

    def write_summary(self, completed: bool, stop_reason: str | None) -> dict:
        summary = self.summary(completed, stop_reason)
        self.checkpointer.write_summary(summary)
        return summary
