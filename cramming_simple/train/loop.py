"""Budgeted MLM pretraining: spend the wall-clock budget on training steps, stop exactly at it, lose nothing.

The budget clock starts at the first training step (compile time included) and pauses only while a
checkpoint is written. Learning rate and batch size are pure functions of p = elapsed / budget, decided at
the start of every optimiser step. The hot loop makes no host-device syncs except at log points (every
`impl.log_seconds`), where the loss is read and checked for NaN/inf.
Resuming restores weights, optimiser, counters, elapsed time and the data position; work done after the
last checkpoint of a killed run is redone, and its time is not charged twice. A damaged `checkpoint.pt`
falls back to `checkpoint.prev.pt`.

Evaluation is not budget time either: at the start, every `impl.eval_minutes` of budget and at the end, the
clock pauses while the held-out MLM loss is scored (an `eval_loss` row in metrics.jsonl) and the inside of
the blocks is measured on one held-out batch (a row in diagnostics.jsonl); at each `impl.keep_at` fraction
the model is saved as `model@<fraction>/` for `glue --at`.

One process owns a run folder: rank 0 holds `runs/<name>/.lock` (flock) for the whole run, and a second
start on the same folder exits with code 2 naming the holder. A full disk stops the run with exit code 5
and `stop_reason: "disk_full"`, the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError, to_dict, to_yaml
from ..data import (
    CACHE_ENV,
    MicrobatchStream,
    MLMCollator,
    PackedData,
    Prefetcher,
    Split,
    check_tokenizer,
    data_mismatch,
    load_tokenizer,
    prepare,
    prepared_path,
)
from ..errors import EXIT_DISK_FULL, DiskFullError, UserError
from ..model import MaskedLM, count_params, save_model, unwrap
from ..optim import make_optimizer
from ..profiles import profile_of
from ..runs import (
    CHECKPOINT,
    COMPLETE,
    CONFIG,
    DIAGNOSTICS,
    LOCK,
    METRICS,
    MODEL,
    PREV_CHECKPOINT,
    RESTARTED,
    SUMMARY,
    has_checkpoint,
    read_summary,
    snapshot_name,
)
from ..runtime import (
    CompiledModule,
    FileLock,
    Progress,
    append_jsonl,
    atomic_write_bytes,
    autocast,
    autocast_dtype,
    die_with_parent,
    environment,
    now_iso,
    pick_device,
    precision_name,
    remove_stale_temporaries,
    rng_state,
    seed_everything,
    set_rng_state,
    write_json,
)
from ..tracking import Trackers, tracker_names
from .checkpoint import UnreadableCheckpoint, load_checkpoint, save_checkpoint
from .config import PretrainConfig
from .distributed import Dist, RankFailed, init_distributed
from .evaluate import HeldOut
from .schedules import accumulation_at, lr_at

log = logging.getLogger(__name__)

EXIT_CODES = {"budget": 0, "max_steps": 0, "max_microbatches": 0, "nonfinite_loss": 3, "preempted": 4, "disk_full": 5}


@dataclass
class TrainState:
    microbatch_steps: int = 0  # per rank; also the data position
    optimizer_steps: int = 0
    tokens: int = 0  # all ranks
    elapsed_s: float = 0.0  # training time spent, all sessions
    step_time_s: float = 0.0  # recent seconds per microbatch: a resumed run must not start a step it cannot finish
    last_loss: float | None = None  # mean loss of the last log window, and over how many microbatches
    last_loss_steps: int = 0
    eval_loss: float | None = None  # held-out MLM loss at the last eval point, and after which optimiser step
    eval_step: int = -1
    eval_s: float = 0.0  # time spent evaluating (budget clock paused), all sessions
    snapshots: dict = field(default_factory=dict)  # "0.50" -> {dir, microbatch_steps, elapsed_s}


class Clock:
    """Training wall-clock: carries over on resume, starts at the first step, pauses for checkpoints."""

    def __init__(self, spent: float):
        self.spent, self.since = spent, None

    def start(self) -> None:
        self.since = time.perf_counter()

    def elapsed(self) -> float:
        return self.spent + (time.perf_counter() - self.since if self.since is not None else 0.0)

    @contextlib.contextmanager
    def paused(self):
        self.spent, self.since = self.elapsed(), None
        try:
            yield
        finally:
            self.start()


class LogWindow:
    """Sums since the last log, kept on the device: no host sync per step, and a NaN/inf in any loss or
    gradient norm propagates into them. `totals` and `finite` are the syncs, averaged over ranks."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.norm_sum = torch.zeros((), device=device)
        self.steps = self.updates = self.tokens = 0
        self.start = 0.0

    def add_microbatch(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss_sum += loss.detach().float()
        self.steps += 1
        self.tokens += tokens

    def add_update(self, grad_norm: torch.Tensor) -> None:
        self.norm_sum += grad_norm.float()
        self.updates += 1

    def totals(self, dist: Dist) -> tuple[float, float]:
        """(summed loss, summed gradient norm), each the mean over ranks."""
        loss_total, norm_total = dist.mean(torch.stack([self.loss_sum, self.norm_sum])).tolist()
        return loss_total, norm_total

    def finite(self, dist: Dist) -> bool:
        return all(math.isfinite(v) for v in self.totals(dist))

    def reset(self, now: float) -> None:
        self.loss_sum.zero_()
        self.norm_sum.zero_()
        self.steps = self.updates = self.tokens = 0
        self.start = now


class StopSignals:
    """SIGTERM (preemption) and a first Ctrl-C ask for a checkpoint and a clean exit; a second Ctrl-C aborts."""

    def __init__(self):
        self.requested = False
        self.previous: dict = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(
            f"\nreceived {signal.Signals(signum).name}: finishing this step, writing a checkpoint, then exiting",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def pretrain(cfg: PretrainConfig, runs_dir: str | Path = "runs", resume: bool = False, restart: bool = False) -> dict:
    """Run (or resume) one pretraining run into `runs_dir/cfg.name`; returns its summary.

    The folder is the run: whatever name its config.yaml stores, `runs_dir/cfg.name` is the folder that trains.
    `restart`: an existing folder is moved aside (runs_dir/.restarted/) first, never deleted."""
    run_dir = Path(runs_dir) / cfg.name
    device = pick_device(cfg.impl.device)
    if cfg.impl.threads:
        torch.set_num_threads(cfg.impl.threads)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # torchrun starts ranks in sessions of their own: if the launcher is killed they would train on, holding
        # the GPUs and the run folder. SIGTERM instead: they write a checkpoint together and exit (code 4).
        die_with_parent(signal.SIGTERM)
    dist = init_distributed(device)
    try:
        if restart:
            move_aside(run_dir, dist)
        with run_lock(run_dir, dist):
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
            with StopSignals() as signals:
                summary = Trainer(cfg, run_dir, device, dist, signals).run()
            dist.barrier()  # all ranks leave together (rank 0 was still publishing the model and summary)
            return summary
    finally:
        dist.close()


def check_folder(run_dir: Path, resume: bool) -> None:
    """What is in the folder decides what may happen: nothing (a new run), a checkpoint (--resume continues it),
    a finished run (returned), or the traces of a run killed before its first checkpoint (refused: --restart).
    A folder copied or moved here is adopted: its stored name becomes the folder's."""
    traces = [f for f in (CONFIG, METRICS, SUMMARY, DIAGNOSTICS) if (run_dir / f).exists()]
    restart = f"pass --restart to move it aside into {run_dir.parent / RESTARTED}/ and start over"
    if not resume and (traces or has_checkpoint(run_dir)):
        raise ConfigError(
            f"run folder {run_dir} already holds a run: pass --resume to continue it, --name to start another, or "
            + restart
        )
    summary = read_summary(run_dir) if (run_dir / SUMMARY).exists() else None
    if summary and summary.get("name") not in (None, run_dir.name):
        log.info(f"{run_dir} was copied or moved from a run named '{summary['name']}': it is now run '{run_dir.name}'")
        adopt(run_dir, summary)
    if summary and summary.get("completed") or has_checkpoint(run_dir) or not traces:
        return
    rows = len((run_dir / METRICS).read_text(errors="replace").splitlines()) if (run_dir / METRICS).exists() else 0
    raise ConfigError(
        f"{run_dir} holds a run stopped before its first checkpoint ({', '.join(traces)}; {rows} metrics rows) and "
        f"nothing to resume: {restart}"
    )


def adopt(run_dir: Path, summary: dict) -> None:
    """The folder's name becomes the run's stored name (summary.json and config.yaml)."""
    summary["name"] = run_dir.name
    write_json(run_dir / SUMMARY, summary)
    if (run_dir / CONFIG).exists():
        saved = OmegaConf.load(run_dir / CONFIG)
        saved.name = run_dir.name
        atomic_write_bytes(run_dir / CONFIG, OmegaConf.to_yaml(saved).encode())


def move_aside(run_dir: Path, dist: Dist) -> None:
    """--restart: the old folder goes to runs_dir/.restarted/<name>-<time>/ (under its lock: never a live run's)."""
    if dist.main and run_dir.exists():
        with FileLock(run_dir / LOCK, f"run folder {run_dir}", purpose="cramming-simple pretrain --restart"):
            aside = run_dir.parent / RESTARTED / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.rename(run_dir, aside)
        log.info(f"moved the old {run_dir} aside to {aside}")
    dist.barrier()


@contextlib.contextmanager
def run_lock(run_dir: Path, dist: Dist):
    """Rank 0 holds `run_dir/.lock` for the whole run; every rank learns whether it got it (a second start
    exits within seconds, before data preparation). Temporary files that killed writers left are removed."""
    lock = FileLock(
        run_dir / LOCK,
        f"run folder {run_dir}",
        purpose="cramming-simple pretrain",
        advice="wait for it to finish, stop it (SIGTERM writes a checkpoint), or pass --name to start another run",
    )
    error = None
    if dist.main:
        try:
            lock.acquire()
        except Exception as err:  # noqa: BLE001 - raised on every rank by fail_together
            error = err
    dist.fail_together(error)
    try:
        if dist.main:
            remove_stale_temporaries(run_dir)
        yield
    finally:
        lock.release()


def check_data_at_hand(cfg: PretrainConfig, run_dir: Path) -> None:
    """A resumed run whose prepared data is not in the cache would prepare it again. A trained tokenizer does
    not come out the same twice (tokenizers breaks ties differently), so that is refused, naming where the data
    was looked for; a pre-tokenised upload comes out the same (checked against the record after preparing)."""
    path = prepared_path(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len)
    if cfg.data.source == "hub-pretokenized" or path.exists():
        return
    recorded = (read_summary(run_dir) or {}).get("data") if (run_dir / SUMMARY).exists() else None
    raise ConfigError(
        f"cannot resume {run_dir}: its prepared data {path.name} is not in {path.parent}, and preparing it again "
        f"would train a new tokenizer (other token ids). Point data.cache_dir (or {CACHE_ENV}) at the cache the "
        f"run used{_cache_hint(recorded)}"
    )


def _cache_hint(recorded: dict | None) -> str:
    cache = (recorded or {}).get("cache")
    return f" ({cache})" if cache else " (older runs prepared it in ./data of the folder they were started in)"


class Trainer:
    def __init__(self, cfg: PretrainConfig, run_dir: Path, device: torch.device, dist: Dist, signals: StopSignals):
        self.cfg, self.run_dir, self.device, self.dist, self.signals = cfg, run_dir, device, dist, signals
        # rank 0 speaks for the run; the others stay quiet
        self.log = log.info if dist.main else (lambda *a, **k: None)
        self.warn = log.warning if dist.main else (lambda *a, **k: None)

        # Data first: preparation is not budget time. Rank 0 prepares, the others then reuse it.
        error = None
        if dist.main:
            try:
                if has_checkpoint(run_dir):
                    check_data_at_hand(cfg, run_dir)
                self.prepared = prepare(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len)
            except Exception as err:  # noqa: BLE001 - raised on every rank by fail_together
                error = err
        dist.fail_together(error)
        if not dist.main:
            self.prepared = prepare(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len, show_progress=False)
        self.tokenizer = load_tokenizer(self.prepared.tokenizer_dir)
        check_tokenizer(self.tokenizer, cfg.arch.vocab_size)
        cfg.arch.pad_token_id = self.tokenizer.pad_token_id  # the embedding's padding index: the tokenizer's pad
        self.data_identity = self.prepared.identity(self.tokenizer)  # recorded in summaries and checkpoints
        data = PackedData(self.prepared.path, verify=cfg.data.verify)
        collate = MLMCollator.for_tokenizer(
            self.tokenizer, cfg.arch.seq_len, cfg.train.mask_prob, cfg.train.seed, cfg.train.masking
        )
        self.split = Split.of(data, cfg.data.holdout)
        self.stream = MicrobatchStream(
            data, collate, cfg.train.microbatch, cfg.train.seed, dist.rank, dist.world, self.split, cfg.data.order
        )

        seed_everything(cfg.train.seed)
        self.model = MaskedLM(cfg.arch, cfg.block).to(device)
        self.optimizer = make_optimizer(
            self.model,
            lr_at(0.0, cfg.train.lr),
            cfg.train.weight_decay,
            tuple(cfg.train.betas),
            cfg.train.eps,
            device,
            cfg.train.decay_rule,
        )
        self.dtype = autocast_dtype(device, cfg.impl.precision)
        self.heldout = (
            HeldOut(data, self.split, collate, cfg.train.microbatch, dist, device, self.dtype)
            if self.split.held
            else None
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.state = TrainState()
        self.keep_previous = True  # False while checkpoint.pt is known to be damaged: the good prev must stay
        self.clock: Clock | None = None
        self.saved_step = -1  # microbatch step of the checkpoint on disk
        self.has_checkpoint = False
        self.resume_from_checkpoint()

        # Execution concerns on the built model: DDP, then compile (falling back to eager if compiling fails).
        self.ddp = (
            DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
            if dist.world > 1
            else None
        )
        self.runner = CompiledModule(
            self.ddp if self.ddp is not None else self.model,
            cfg.impl.compile,
            reset=lambda: self.optimizer.zero_grad(set_to_none=True),
        )

    # ------------------------------------------------------------------------------------------ state

    def resume_from_checkpoint(self) -> None:
        """Restore from checkpoint.pt, or from checkpoint.prev.pt when that one cannot be read; nothing if neither "
        "exists."""
        tried: list[UnreadableCheckpoint] = []
        for path in (self.run_dir / CHECKPOINT, self.run_dir / PREV_CHECKPOINT):
            if not path.exists():
                continue
            try:
                self.restore(load_checkpoint(path), path)
            except UnreadableCheckpoint as err:
                tried.append(err)
                continue
            for err in tried:
                self.warn(
                    f"cannot resume from {err}; resumed from {path.name} instead (the work since it is "
                    "redone, not charged twice)"
                )
                self.keep_previous = False  # the next checkpoint replaces the damaged file; the good prev stays
            return
        if tried:
            raise UserError(
                f"cannot resume {self.run_dir}: "
                + "; ".join(f"{e.path.name} {e.reason}" for e in tried)
                + ". Start over with --name NEW (or move the folder away)"
            )

    def restore(self, ckpt: dict, path: Path) -> None:
        if not isinstance(ckpt, dict) or "world_size" not in ckpt:
            raise UnreadableCheckpoint(path, "is not a pretraining checkpoint (no world_size)")
        if ckpt["world_size"] != self.dist.world:
            raise ConfigError(
                f"checkpoint was written by {ckpt['world_size']} processes, this run has {self.dist.world}: resume "
                "with the same number"
            )
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            state = TrainState(**ckpt["state"])
            rng = ckpt["rng"][self.dist.rank] if self.dist.rank < len(ckpt["rng"]) else ckpt["rng"][0]
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UnreadableCheckpoint(
                path, f"does not fit this run ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            ) from None
        recorded = ckpt.get("data") or (read_summary(self.run_dir) or {}).get("data")  # older checkpoints: no data
        reason = data_mismatch(recorded, self.data_identity)
        if reason:
            raise ConfigError(
                f"cannot resume {self.run_dir}: the prepared data at {self.prepared.path} is not what it trained on: "
                f"{reason}. Resuming would change the token ids; point data.cache_dir (or {CACHE_ENV}) at the "
                f"cache the run used{_cache_hint(recorded)}"
            )
        self.state, self.saved_step, self.has_checkpoint = state, state.microbatch_steps, True
        if self.dist.main and isinstance(ckpt.get("summary"), dict):  # summary.json as it was written with it
            write_json(self.run_dir / SUMMARY, {**ckpt["summary"], "name": self.cfg.name})
        set_rng_state(rng)
        for log in (self.run_dir / METRICS, self.run_dir / DIAGNOSTICS):
            if self.dist.main and log.exists():  # rows logged after the checkpoint describe work that is redone now
                kept = [
                    line
                    for line in log.read_text(errors="replace").splitlines()
                    if _row_steps(line) <= self.state.microbatch_steps
                ]
                atomic_write_bytes(log, "".join(line + "\n" for line in kept).encode())
        self.log(
            f"resuming {self.run_dir} at microbatch step {self.state.microbatch_steps} "
            f"({self.state.elapsed_s / 3600:.3f} h spent)"
        )

    def checkpoint(self, stop_reason: str | None = None) -> None:
        """Every rank pauses its clock; rank 0 writes the checkpoint and, with it, a summary that agrees with it.

        Nothing new since the last good checkpoint (e.g. preempted right after one): only the summary. Every
        rank learns whether rank 0's writes succeeded (a full disk stops them all alike, never one alone).
        """
        unchanged = self.saved_step == self.state.microbatch_steps and self.keep_previous
        rngs = [rng_state()]
        if self.dist.world > 1 and not unchanged:
            rngs = [None] * self.dist.world
            torch.distributed.all_gather_object(rngs, rng_state(), group=self.dist.group)
        error = None
        if self.dist.main:
            try:
                summary = {**self.summary(completed=False, stop_reason=stop_reason), "checkpoint": CHECKPOINT}
                if unchanged:
                    write_json(self.run_dir / SUMMARY, summary)
                else:
                    state = {
                        "model": self.model.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                        "scaler": self.scaler.state_dict(),
                        "state": asdict(self.state),
                        "rng": rngs,
                        "world_size": self.dist.world,
                        "block": self.cfg.block,
                        "data": self.data_identity,
                        "summary": summary,  # what summary.json says beside this checkpoint (a resume repairs it)
                    }
                    save_checkpoint(  # the summary is written once the checkpoint is complete, just before its rename
                        self.run_dir / CHECKPOINT,
                        state,
                        previous=self.run_dir / PREV_CHECKPOINT if self.keep_previous else None,
                        before_commit=lambda: write_json(self.run_dir / SUMMARY, summary),
                    )
                self.has_checkpoint = True
            except Exception as err:  # noqa: BLE001 - re-raised below, once the other ranks know
                error = err
        self.dist.fail_together(error)
        self.keep_previous, self.saved_step = True, self.state.microbatch_steps

    # ------------------------------------------------------------------------------------------ loop

    def run(self) -> dict:
        """Train until the budget is spent (or a stop); a full disk ends the run with stop_reason "disk_full"."""
        self.started_at = now_iso()
        self.trackers: Trackers | None = None
        try:
            return self.train()
        except DiskFullError:
            self.state.elapsed_s = self.clock.elapsed() if self.clock else self.state.elapsed_s
            if self.dist.main:
                with contextlib.suppress(Exception):  # a small file: it may still fit
                    self.write_summary(completed=False, stop_reason="disk_full")
            raise
        finally:
            if self.trackers is not None:
                self.trackers.close()

    def train(self) -> dict:
        self.begin()
        while True:
            stop = self.decide_stop()
            if stop:
                break
            if self.accumulated == 0:  # schedules: pure functions of p, decided once per optimiser step
                self.set_schedules()
            elif self.cfg.train.ramp == "cramming":  # cramming's LambdaLR stepped every microbatch
                self.set_lr(self.elapsed / self.cfg.budget_s)
            self.microbatch(next(self.prefetch))
            if self.accumulated == self.n_acc:
                self.optimizer_step()
            if self.elapsed >= self.next_log:  # the same decision on every rank: elapsed is agreed
                self.log_window()
            if self.accumulated == 0 and not self.nonfinite:  # between optimiser steps, the same on every rank
                if self.elapsed >= self.next_eval:
                    self.evaluate()
                if self.keep and self.elapsed >= self.keep[0] * self.cfg.budget_s:
                    self.keep_snapshot(self.keep.pop(0))
                if self.elapsed >= self.next_ckpt:
                    self.maybe_checkpoint()
        return self.finish(stop)

    def begin(self) -> None:
        cfg, st = self.cfg, self.state
        if self.dist.main:
            atomic_write_bytes(self.run_dir / CONFIG, to_yaml(cfg).encode())
        self.prefetch = Prefetcher(self.stream, st.microbatch_steps, self.device, cfg.impl.prefetch)
        self.trackers = Trackers(  # rank 0 only: the others get none
            tracker_names(cfg.impl.tracker) if self.dist.main else [],
            self.run_dir,
            cfg.name,
            to_dict(cfg),
            resume_step=st.microbatch_steps,
        )
        self.progress = (
            Progress(cfg.budget_s, f"pretrain {self.model.encoder.spec.name}", unit="s", log_every=cfg.impl.log_seconds)
            if self.dist.main
            else None
        )
        self.log(
            f"pretraining {self.model.encoder.spec.title} [{cfg.block}] "
            f"({count_params(self.model)['params'] / 1e6:.1f}M params) for {cfg.hours:g} h "
            f"on {environment(self.device)['device']}"
            f" x{self.dist.world}, {'compiled' if self.runner.compiled else 'eager'}, data {self.prepared.path} "
            f"({len(self.stream.data)} sequences), profile {profile_of('pretrain', asdict(cfg))}"
        )
        self.window = LogWindow(self.device)
        self.clock = Clock(st.elapsed_s)
        self.elapsed = st.elapsed_s  # agreed by every rank (from the checkpoint); from here on, by decide_stop's vote
        self.next_log = st.elapsed_s + cfg.impl.log_seconds
        self.next_ckpt = st.elapsed_s + cfg.impl.checkpoint_minutes * 60
        self.last_tick: float | None = None  # st.step_time_s: EMA of seconds per microbatch (carried over a resume)
        self.accumulated, self.n_acc, self.lr = 0, 1, 0.0
        self.nonfinite, self.disk_full = False, None
        self.next_eval = self.eval_point_after(st.elapsed_s)
        self.keep = [f for f in cfg.impl.keep_at if f * cfg.budget_s > st.elapsed_s]
        self.clock.start()
        if st.microbatch_steps == 0:  # the model at init: the first point of every eval curve and diagnostics plot
            self.evaluate()
        self.window.start = self.clock.elapsed()

    def decide_stop(self) -> str | None:
        """One vote per microbatch: every rank sees the same elapsed time (the slowest rank's) and the same stop
        decision. The budget stops a run before a step it could not finish (step time: an EMA)."""
        st, now = self.state, self.clock.elapsed()
        if self.last_tick is not None:
            st.step_time_s = (
                now - self.last_tick if st.step_time_s == 0.0 else 0.9 * st.step_time_s + 0.1 * (now - self.last_tick)
            )
        self.last_tick = now
        at_boundary = self.accumulated == 0
        # Each rank's step-time EMA is its own clock's: the stop rule uses the largest, so that no rank stops a
        # step before the others (it would wait in the final eval's all-reduce while they train on).
        self.elapsed, step_s, (preempt, bad, no_space) = self.dist.vote(
            now, st.step_time_s, self.signals.requested and at_boundary, self.nonfinite, self.disk_full is not None
        )
        if no_space:
            raise self.disk_full or RankFailed(EXIT_DISK_FULL)
        if bad:
            return "nonfinite_loss"
        if self.elapsed + step_s >= self.cfg.budget_s:
            return "budget"
        if preempt:
            return "preempted"
        for cap in ("max_steps", "max_microbatches"):
            limit = getattr(self.cfg.train, cap)
            if limit is not None and st.microbatch_steps >= limit:
                return cap
        return None

    def set_schedules(self) -> None:
        train, p = self.cfg.train, self.elapsed / self.cfg.budget_s
        self.n_acc = accumulation_at(p, train.microbatch, train.batch_max, train.ramp_end, self.dist.world, train.ramp)
        self.set_lr(p)

    def set_lr(self, p: float) -> None:
        self.lr = lr_at(p, self.cfg.train.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def microbatch(self, batch: dict) -> None:
        """Forward and backward of one microbatch; DDP all-reduces only on the last one of an optimiser step."""
        sync = self.accumulated == self.n_acc - 1
        loss = self.runner.run(self.forward_backward, batch, 1.0 / self.n_acc, sync)
        tokens = self.cfg.train.microbatch * self.cfg.arch.seq_len * self.dist.world
        self.window.add_microbatch(loss, tokens)
        self.accumulated += 1
        self.state.microbatch_steps += 1
        self.state.tokens += tokens

    def forward_backward(self, model: torch.nn.Module, batch: dict, scale: float, sync: bool) -> torch.Tensor:
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()
        with no_sync:
            with autocast(self.device, self.dtype):
                loss = model(**batch)
            self.scaler.scale(loss * scale).backward()
        return loss

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        self.window.add_update(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
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
            "microbatch_steps": st.microbatch_steps,
            "optimizer_steps": st.optimizer_steps,
            "tokens": st.tokens,
            "elapsed_s": round(now, 3),
            "p": round(now / cfg.budget_s, 6),
            "lr": self.lr,
            "batch_size": self.n_acc * cfg.train.microbatch * self.dist.world,
            "loss": mean_loss,
            "grad_norm": norm_total / window.updates if window.updates else None,
            "tokens_per_s": window.tokens / seconds,
        }
        if self.dist.main:
            try:
                append_jsonl(self.run_dir / METRICS, row)
            except DiskFullError as err:  # every rank stops at the next vote
                self.disk_full = err
            self.trackers.log(row, st.microbatch_steps, "train")
            self.progress.update(
                min(now, cfg.budget_s),
                loss=mean_loss,
                step=st.microbatch_steps,
                steps_s=round(window.steps / seconds, 2),
                tok_s=round(row["tokens_per_s"]),
            )
        window.reset(now)
        self.next_log = self.elapsed + cfg.impl.log_seconds

    def maybe_checkpoint(self) -> None:
        """Never a checkpoint with a non-finite loss or gradient behind it: a sync every few minutes, averaged
        over ranks, so that a NaN on any rank stops all of them alike."""
        self.nonfinite = not self.window.finite(self.dist)
        if self.nonfinite:
            return
        with self.clock.paused():
            self.state.elapsed_s = self.clock.elapsed()
            self.checkpoint()
        self.next_ckpt = self.elapsed + self.cfg.impl.checkpoint_minutes * 60

    def evaluate(self) -> None:
        """Held-out loss (every rank scores its share) and, on rank 0, the diagnostics: the clock is paused."""
        if self.heldout is None:
            return
        st = self.state
        with self.clock.paused():
            started = time.perf_counter()
            loss = self.heldout.loss(self.model)
            st.eval_loss, st.eval_step = (loss if math.isfinite(loss) else None), st.optimizer_steps
            at = {
                "microbatch_steps": st.microbatch_steps,
                "optimizer_steps": st.optimizer_steps,
                "tokens": st.tokens,
                "elapsed_s": round(self.clock.elapsed(), 3),
                "p": round(self.clock.elapsed() / self.cfg.budget_s, 6),
            }
            if self.dist.main:
                diagnostics = self.heldout.diagnostics(self.model)
                seconds = time.perf_counter() - started
                try:
                    append_jsonl(
                        self.run_dir / METRICS,
                        {"kind": "eval", **at, "eval_loss": st.eval_loss, "eval_s": round(seconds, 3)},
                    )
                    append_jsonl(self.run_dir / DIAGNOSTICS, {**at, **diagnostics})
                except DiskFullError as err:  # every rank stops at the next vote
                    self.disk_full = err
                self.trackers.log({"eval_loss": st.eval_loss, "eval_s": seconds}, st.microbatch_steps, "eval")
            st.eval_s += time.perf_counter() - started
        self.next_eval = self.eval_point_after(self.elapsed)  # the agreed time: every rank keeps the same point

    def eval_point_after(self, elapsed: float) -> float:
        """The next point of the fixed eval grid (every impl.eval_minutes of budget) after `elapsed`."""
        every = self.cfg.eval_every_s
        return (math.floor(elapsed / every) + 1) * every if every else math.inf

    def keep_snapshot(self, fraction: float) -> None:
        """model@<fraction>/ (rank 0), clock paused: the model as it stands at that fraction of the budget."""
        st, name = self.state, snapshot_name(fraction)
        with self.clock.paused():
            started = time.perf_counter()
            if self.dist.main:
                save_model(self.model, self.run_dir / name, self.tokenizer)
            st.snapshots[f"{fraction:.2f}"] = {
                "dir": name,
                "microbatch_steps": st.microbatch_steps,
                "elapsed_s": round(self.clock.elapsed(), 3),
            }
            st.eval_s += time.perf_counter() - started
        self.log(f"kept {self.run_dir / name} at {fraction:.0%} of the budget")

    def finish(self, stop: str) -> dict:
        """The steps since the last log join the final loss; a last checkpoint, the model, the summary."""
        st, dist = self.state, self.dist
        self.prefetch.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        st.elapsed_s = self.clock.elapsed()
        if stop != "nonfinite_loss" and self.window.steps:  # the same count on every rank
            loss_total, norm_total = self.window.totals(dist)
            if not (math.isfinite(loss_total) and math.isfinite(norm_total)):
                stop = "nonfinite_loss"
            elif self.window.steps >= st.last_loss_steps:
                st.last_loss, st.last_loss_steps = loss_total / self.window.steps, self.window.steps
            else:  # a short tail after the last log joins that window: never a loss over a handful of microbatches
                n = st.last_loss_steps + self.window.steps
                st.last_loss, st.last_loss_steps = (st.last_loss * st.last_loss_steps + loss_total) / n, n
        completed = stop in COMPLETE
        if completed and st.eval_step != st.optimizer_steps:
            self.evaluate()  # the final model's held-out loss (clock paused, as always)
            st.elapsed_s = self.clock.elapsed()
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
        if self.progress is not None:
            self.progress.update(min(st.elapsed_s, self.cfg.budget_s))
            self.progress.close(loss=final_loss, step=st.microbatch_steps)
        self.log(
            f"{stop}: {st.microbatch_steps} microbatch steps, {st.tokens / 1e6:.1f}M tokens in "
            f"{st.elapsed_s / 3600:.3f} h; final loss {final_loss:.4f}"
            + (f", held-out loss {st.eval_loss:.4f}" if st.eval_loss is not None else "")
            + f"; {self.run_dir}"
        )
        return summary

    # ------------------------------------------------------------------------------------------ summary

    def summary(self, completed: bool, stop_reason: str | None) -> dict:
        cfg, st = self.cfg, self.state
        counts = count_params(unwrap(self.model))
        return {
            "name": cfg.name,
            "block": cfg.block,
            "block_title": unwrap(self.model).encoder.spec.title,
            "block_source": cfg.block_source,  # where a user's block came from, with its source's sha256
            "arch": asdict(cfg.arch),
            "budget": cfg.budget,
            "budget_hours": cfg.hours,
            "profile": profile_of("pretrain", asdict(cfg)),  # clean | published | mixed (...): docs/recipe.md
            "params": counts["params"],
            "non_embedding_params": counts["non_embedding"],
            "microbatch": cfg.train.microbatch,
            "microbatch_steps": st.microbatch_steps,
            "optimizer_steps": st.optimizer_steps,
            "tokens": st.tokens,
            "elapsed_s": st.elapsed_s,
            "final_loss": st.last_loss,  # mean loss of the last log window (a short tail joins the window before it)
            "eval_loss": st.eval_loss if st.eval_step == st.optimizer_steps else None,  # held-out, of the final model
            "eval_sequences": self.split.held,
            "eval_s": round(st.eval_s, 3),  # evaluation and snapshots: outside the budget
            "snapshots": st.snapshots,
            **environment(self.device),
            "world_size": self.dist.world,
            "precision": precision_name(self.dtype),
            "compiled": self.runner.compiled,
            "data": {**cfg.data.describe(), **self.data_identity, "sequences": len(self.stream.data)},
            "amendments": cfg.amendments,  # recipe changes accepted on a resume (--extend-budget)
            "completed": completed,
            "stop_reason": stop_reason,
            "checkpoint": CHECKPOINT if self.has_checkpoint else None,
            "started_at": self.started_at,
            "finished_at": now_iso(),
        }

    def write_summary(self, completed: bool, stop_reason: str | None) -> dict:
        summary = self.summary(completed, stop_reason)
        write_json(self.run_dir / SUMMARY, summary)
        return summary


def _row_steps(line: str) -> float:
    """The microbatch step of a metrics.jsonl row; a row cut short (a crash, a full disk) counts as redone work."""
    try:
        return json.loads(line)["microbatch_steps"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
