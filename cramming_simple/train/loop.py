"""Budgeted MLM pretraining: spend the wall-clock budget on training steps, stop exactly at it, lose nothing.

The budget clock starts at the first training step (compile time included) and pauses only while a
checkpoint is written. Learning rate and batch size are pure functions of p = elapsed / budget, decided at
the start of every optimiser step. The hot loop makes no host-device syncs except at log points (every
`impl.log_seconds`), where the loss is read and checked for NaN/inf.
Resuming restores weights, optimiser, counters, elapsed time and the data position; work done after the
last checkpoint of a killed run is redone, and its time is not charged twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError, to_yaml
from ..data import MicrobatchStream, MLMCollator, PackedData, Prefetcher, check_tokenizer, load_tokenizer, prepare
from ..model import MaskedLM, count_params, save_model, unwrap
from ..optim import make_optimizer
from ..runs import CHECKPOINT, CONFIG, METRICS, MODEL, SUMMARY
from ..runtime import Progress, append_jsonl, atomic_write_bytes, autocast, autocast_dtype, compile_model, environment, now_iso, pick_device, read_json, rng_state, seed_everything, set_rng_state, write_json
from .checkpoint import load_checkpoint, save_checkpoint
from .config import PretrainConfig
from .distributed import Dist, init_distributed
from .schedules import accumulation_at, lr_at

EXIT_CODES = {"budget": 0, "max_steps": 0, "nonfinite_loss": 3, "preempted": 4}


@dataclass
class TrainState:
    microbatch_steps: int = 0  # per rank; also the data position
    optimizer_steps: int = 0
    tokens: int = 0  # all ranks
    elapsed_s: float = 0.0  # training time spent, all sessions


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
        print(f"\nreceived {signal.Signals(signum).name}: finishing this step, writing a checkpoint, then exiting", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def pretrain(cfg: PretrainConfig, runs_dir: str | Path = "runs", resume: bool = False) -> dict:
    """Run (or resume) one pretraining run into `runs_dir/cfg.name`; returns its summary."""
    run_dir = Path(runs_dir) / cfg.name
    has_state = (run_dir / CHECKPOINT).exists() or (run_dir / SUMMARY).exists()
    if has_state and not resume:
        raise ConfigError(f"run folder {run_dir} already holds a run: pass --resume to continue it, or --name to start another")
    if resume and (run_dir / SUMMARY).exists() and read_json(run_dir / SUMMARY).get("completed"):
        print(f"{run_dir} is complete; nothing to do", flush=True)
        return read_json(run_dir / SUMMARY)

    device = pick_device(cfg.impl.device)
    if cfg.impl.threads:
        torch.set_num_threads(cfg.impl.threads)
    dist = init_distributed(device)
    try:
        with StopSignals() as signals:
            return Trainer(cfg, run_dir, device, dist, signals).run()
    finally:
        dist.close()


class Trainer:
    def __init__(self, cfg: PretrainConfig, run_dir: Path, device: torch.device, dist: Dist, signals: StopSignals):
        self.cfg, self.run_dir, self.device, self.dist, self.signals = cfg, run_dir, device, dist, signals
        self.log = print if dist.main else (lambda *a, **k: None)

        # Data first: preparation is not budget time. Rank 0 prepares, the others then reuse it.
        if dist.main:
            self.prepared = prepare(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len)
        dist.barrier()
        if not dist.main:
            self.prepared = prepare(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len, show_progress=False)
        self.tokenizer = load_tokenizer(self.prepared.tokenizer_dir)
        check_tokenizer(self.tokenizer, cfg.arch.vocab_size)
        data = PackedData(self.prepared.path, verify=cfg.data.verify)
        collate = MLMCollator(cfg.arch.seq_len, cfg.train.mask_prob, self.tokenizer.mask_token_id, self.tokenizer.all_special_ids, len(self.tokenizer), cfg.train.seed)
        self.stream = MicrobatchStream(data, collate, cfg.train.microbatch, cfg.train.seed, dist.rank, dist.world)

        seed_everything(cfg.train.seed)
        self.model = MaskedLM(cfg.arch, cfg.block).to(device)
        self.optimizer = make_optimizer(self.model, lr_at(0.0, cfg.train.lr), cfg.train.weight_decay, tuple(cfg.train.betas), cfg.train.eps, device)
        self.dtype = autocast_dtype(device, cfg.impl.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.state = TrainState()
        if (run_dir / CHECKPOINT).exists():
            self.restore(load_checkpoint(run_dir / CHECKPOINT))

        self.ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None) if dist.world > 1 else None
        want_compile = cfg.impl.compile if cfg.impl.compile is not None else device.type == "cuda"
        self.step_model, self.compiled = compile_model(self.ddp if self.ddp is not None else self.model, want_compile)
        self.compile_checked = False

    # ------------------------------------------------------------------------------------------ state

    def restore(self, ckpt: dict) -> None:
        if ckpt["world_size"] != self.dist.world:
            raise ConfigError(f"checkpoint was written by {ckpt['world_size']} processes, this run has {self.dist.world}: resume with the same number")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"][self.dist.rank] if self.dist.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        metrics = self.run_dir / METRICS
        if self.dist.main and metrics.exists():  # rows logged after the checkpoint describe work that is redone now
            rows = [line for line in metrics.read_text().splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line)["microbatch_steps"] <= self.state.microbatch_steps]
            atomic_write_bytes(metrics, "".join(line + "\n" for line in kept).encode())
        self.log(f"resuming {self.run_dir} at microbatch step {self.state.microbatch_steps} ({self.state.elapsed_s / 3600:.3f} h spent)", flush=True)

    def checkpoint(self) -> None:
        """Every rank pauses its clock; rank 0 writes; all continue together."""
        rngs = [rng_state()]
        if self.dist.world > 1:
            rngs = [None] * self.dist.world
            torch.distributed.all_gather_object(rngs, rng_state(), group=self.dist.group)
        if self.dist.main:
            save_checkpoint(
                self.run_dir / CHECKPOINT,
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "state": asdict(self.state),
                    "rng": rngs,
                    "world_size": self.dist.world,
                    "block": self.cfg.block,
                },
            )
        self.dist.barrier()

    # ------------------------------------------------------------------------------------------ loop

    def run(self) -> dict:
        cfg, st, dist = self.cfg, self.state, self.dist
        micro, budget = cfg.train.microbatch, cfg.budget_s
        if dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG).write_text(to_yaml(cfg))
        self.started_at = now_iso()
        prefetch = Prefetcher(self.stream, st.microbatch_steps, self.device, cfg.impl.prefetch)
        progress = Progress(budget, f"pretrain {cfg.block}", unit="s", log_every=cfg.impl.log_seconds) if dist.main else None
        self.log(f"pretraining {cfg.block} ({count_params(self.model)['params'] / 1e6:.1f}M params) for {cfg.hours:g} h on {environment(self.device)['device']}"
                 f" x{dist.world}, {'compiled' if self.compiled else 'eager'}, data {self.prepared.path} ({len(self.stream.data)} sequences)", flush=True)

        # Sums since the last log, on the device: NaN/inf in any loss or gradient norm propagate into them.
        loss_sum = torch.zeros((), device=self.device)
        norm_sum = torch.zeros((), device=self.device)
        window_steps = window_updates = window_tokens = 0
        clock = Clock(st.elapsed_s)
        next_log = st.elapsed_s + cfg.impl.log_seconds
        next_ckpt = st.elapsed_s + cfg.impl.checkpoint_minutes * 60
        step_time, last = 0.0, None  # EMA of seconds per microbatch, to stop before overrunning the budget
        accumulated, n_acc, lr = 0, 1, 0.0
        nonfinite, stop_reason, final_loss = False, None, float("nan")
        clock.start()
        window_start = clock.elapsed()
        while True:
            now = clock.elapsed()
            if last is not None:
                step_time = now - last if step_time == 0.0 else 0.9 * step_time + 0.1 * (now - last)
            last = now
            # One vote per microbatch: every rank sees the same elapsed time and the same stop decision.
            at_boundary = accumulated == 0
            elapsed, (preempt, bad) = dist.vote(now, self.signals.requested and at_boundary, nonfinite)
            if bad:
                stop_reason = "nonfinite_loss"
            elif elapsed + step_time >= budget:
                stop_reason = "budget"
            elif preempt:
                stop_reason = "preempted"
            elif cfg.train.max_steps is not None and st.microbatch_steps >= cfg.train.max_steps:
                stop_reason = "max_steps"
            if stop_reason:
                break

            if at_boundary:  # schedules: pure functions of p, decided once per optimiser step
                p = elapsed / budget
                n_acc = accumulation_at(p, micro, cfg.train.batch_max, cfg.train.ramp_end, dist.world)
                lr = lr_at(p, cfg.train.lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr

            loss = self.forward_backward(next(prefetch), scale=1.0 / n_acc, sync=accumulated == n_acc - 1)
            loss_sum += loss.detach().float()
            accumulated += 1
            st.microbatch_steps += 1
            st.tokens += micro * cfg.arch.seq_len * dist.world
            window_steps += 1
            window_tokens += micro * cfg.arch.seq_len * dist.world
            if accumulated == n_acc:
                self.scaler.unscale_(self.optimizer)
                norm_sum += torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip).float()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                st.optimizer_steps += 1
                window_updates += 1
                accumulated = 0

            if elapsed >= next_log:  # the same decision on every rank: elapsed is agreed
                # The one sync of a log interval: loss and gradient norm, averaged over ranks.
                loss_total, norm_total = dist.mean(torch.stack([loss_sum, norm_sum])).tolist()
                mean_loss = loss_total / window_steps
                nonfinite = not (math.isfinite(loss_total) and math.isfinite(norm_total))
                final_loss = mean_loss if not nonfinite else final_loss
                now = clock.elapsed()
                row = {
                    "microbatch_steps": st.microbatch_steps, "optimizer_steps": st.optimizer_steps, "tokens": st.tokens,
                    "elapsed_s": round(now, 3), "p": round(now / budget, 6), "lr": lr, "batch_size": n_acc * micro * dist.world,
                    "loss": mean_loss, "grad_norm": norm_total / window_updates if window_updates else None,
                    "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                }
                if dist.main:
                    append_jsonl(self.run_dir / METRICS, row)
                    steps_s = window_steps / max(now - window_start, 1e-9)
                    progress.update(min(now, budget), loss=mean_loss, step=st.microbatch_steps, steps_s=round(steps_s, 2), tok_s=round(row["tokens_per_s"]))
                loss_sum.zero_()
                norm_sum.zero_()
                window_steps = window_updates = window_tokens = 0
                window_start, next_log = now, elapsed + cfg.impl.log_seconds

            if elapsed >= next_ckpt and accumulated == 0 and not nonfinite:
                # Never write a checkpoint with a non-finite loss or gradient behind it (a sync every few minutes;
                # averaged over ranks, so that a NaN on any rank stops all of them alike).
                nonfinite = not bool(torch.isfinite(dist.mean(torch.stack([loss_sum, norm_sum]))).all().item())
                if not nonfinite:
                    with clock.paused():
                        st.elapsed_s = clock.elapsed()
                        self.checkpoint()
                        if dist.main:
                            self.write_summary(completed=False, stop_reason=None, final_loss=final_loss)
                    next_ckpt = elapsed + cfg.impl.checkpoint_minutes * 60

        prefetch.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        st.elapsed_s = clock.elapsed()
        if stop_reason != "nonfinite_loss" and window_steps:  # the steps since the last log (same count on every rank)
            loss_total, norm_total = dist.mean(torch.stack([loss_sum, norm_sum])).tolist()
            if math.isfinite(loss_total) and math.isfinite(norm_total):
                final_loss = loss_total / window_steps
            else:
                stop_reason = "nonfinite_loss"
        completed = stop_reason in ("budget", "max_steps")
        if stop_reason == "nonfinite_loss":
            self.log(f"non-finite loss or gradient: stopped at microbatch step {st.microbatch_steps}; the last good checkpoint is kept", file=sys.stderr, flush=True)
        else:
            self.checkpoint()
            if completed and dist.main:
                save_model(self.model, self.run_dir / MODEL, self.tokenizer)
        summary = self.write_summary(completed, stop_reason, final_loss) if dist.main else self.summary(completed, stop_reason, final_loss)
        if progress is not None:
            progress.update(min(st.elapsed_s, budget))
            progress.close(loss=final_loss, step=st.microbatch_steps)
        self.log(f"{stop_reason}: {st.microbatch_steps} microbatch steps, {st.tokens / 1e6:.1f}M tokens in {st.elapsed_s / 3600:.3f} h; "
                 f"final loss {final_loss:.4f}; {self.run_dir}", flush=True)
        return summary

    def forward_backward(self, batch: dict, scale: float, sync: bool) -> torch.Tensor:
        """One microbatch; `sync` is False while gradients accumulate (DDP then skips its all-reduce).

        The first call of a compiled model is where inductor really compiles: if that fails, warn, go eager.
        """
        try:
            return self._forward_backward(batch, scale, sync)
        except Exception as err:  # noqa: BLE001
            if not self.compiled or self.compile_checked:
                raise
            warnings.warn(f"torch.compile failed at the first step ({type(err).__name__}: {str(err)[:300]}); running eager", stacklevel=1)
            self.step_model, self.compiled = (self.ddp if self.ddp is not None else self.model), False
            self.optimizer.zero_grad(set_to_none=True)
            return self._forward_backward(batch, scale, sync)
        finally:
            self.compile_checked = True

    def _forward_backward(self, batch: dict, scale: float, sync: bool) -> torch.Tensor:
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()
        with no_sync:
            with autocast(self.device, self.dtype):
                loss = self.step_model(**batch)
            self.scaler.scale(loss * scale).backward()
        return loss

    # ------------------------------------------------------------------------------------------ summary

    def summary(self, completed: bool, stop_reason: str | None, final_loss: float) -> dict:
        cfg, st = self.cfg, self.state
        counts = count_params(unwrap(self.model))
        return {
            "name": cfg.name,
            "block": cfg.block,
            "arch": asdict(cfg.arch),
            "budget": cfg.budget,
            "budget_hours": cfg.hours,
            "params": counts["params"],
            "non_embedding_params": counts["non_embedding"],
            "microbatch": cfg.train.microbatch,
            "microbatch_steps": st.microbatch_steps,
            "optimizer_steps": st.optimizer_steps,
            "tokens": st.tokens,
            "elapsed_s": st.elapsed_s,
            "final_loss": final_loss if final_loss == final_loss else None,
            **environment(self.device),
            "world_size": self.dist.world,
            "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype],
            "compiled": self.compiled,
            "data": {**cfg.data.describe(), "hash": self.prepared.path.name, "sequences": len(self.stream.data)},
            "completed": completed,
            "stop_reason": stop_reason,
            "checkpoint": CHECKPOINT if (self.run_dir / CHECKPOINT).exists() else None,
            "started_at": self.started_at,
            "finished_at": now_iso(),
        }

    def write_summary(self, completed: bool, stop_reason: str | None, final_loss: float) -> dict:
        summary = self.summary(completed, stop_reason, final_loss)
        write_json(self.run_dir / SUMMARY, summary)
        return summary
