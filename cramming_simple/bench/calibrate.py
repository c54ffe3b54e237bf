"""Calibration: the baseline's (Pre-LN's) training rate on this device at a budget's arch, microbatch and precision,
with a 95 % interval: what a budget in reference-device hours is converted with (hardware.py, docs/recipe.md).

A timed round is what a run spends its microbatches on, on average: `accumulate` microbatches forward and backward,
then one optimiser update (clipping, the GradScaler), all through the trainer's own `TrainStep` on the bench's fixed
batch (bench.step). `accumulate` is the budget's microbatches per update averaged over its batch ramp
(`train.schedules.microbatches_per_update`: 20 for the 24h budget), so that updates weigh in as they do over a
run. The warm-up rounds (compile, allocator) are not kept. Rounds are added until the median rate's bootstrap
interval is within +-target of it, or until `max_seconds` of timed rounds. None of this is budget time.
"""

from __future__ import annotations

import gc
import itertools
import platform
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .. import __version__
from ..hardware import HardwareReference
from ..model import ArchConfig
from ..reference import BASELINE
from ..runtime import Progress, autocast_dtype, device_name, now_iso, precision_name, seed_everything
from .intervals import median_interval
from .step import COMPILE_WARMUP, Contender, block_contender, make_batch

MIN_ROUNDS = 5  # timed rounds before the interval is asked
TARGET = 0.03  # the interval's half-width, relative to the rate: +-3 %
MAX_SECONDS = 180.0  # of timed rounds, at most


@dataclass
class Calibration:
    """The local Pre-LN rate at a budget's settings, and how it was measured."""

    device: str
    rate: float  # Pre-LN training microbatches per second: the median over rounds
    low: float  # its 95 % bootstrap interval
    high: float
    rounds: int
    seconds: float  # of timed rounds
    stopped_by: str  # target | time cap
    arch: str
    microbatch: int
    seq_len: int
    precision: str
    compiled: bool
    accumulate: int  # microbatches per timed update
    date: str
    host: str
    torch: str
    cuda: str | None

    def as_reference(self, name: str, command: str | None = None) -> HardwareReference:
        """This measurement as a reference entry (`calibrate --save`, `--json`)."""
        return HardwareReference(
            name=name,
            device=self.device,
            preln_microbatches_per_s=round(self.rate, 4),
            arch=self.arch,
            microbatch=self.microbatch,
            seq_len=self.seq_len,
            precision=self.precision,
            compiled=self.compiled,
            source=f"cramming-simple {__version__} calibrate on {self.host}",
            date=self.date,
            derivation=(
                f"median of {self.rounds} timed rounds of {self.accumulate} microbatches and one optimiser update "
                f"each; 95 % interval [{self.low:.4g}, {self.high:.4g}] ({self.stopped_by})"
            ),
            torch=self.torch,
            cuda=self.cuda,
            command=command,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(
    arch: ArchConfig,
    microbatch: int,
    device: torch.device,
    precision: str = "auto",
    compile_model: bool = False,
    accumulate: int = 1,
    target: float = TARGET,
    max_seconds: float = MAX_SECONDS,
    seed: int = 0,
) -> Calibration:
    """Time Pre-LN training rounds here (see the module docstring) until the rate is known to +-target."""
    dtype = autocast_dtype(device, precision)
    seed_everything(seed)
    baseline = block_contender(BASELINE, arch, make_batch(arch, microbatch, device, seed), device)
    baseline.prepare(dtype, device, compile_model)
    warmup = COMPILE_WARMUP if compile_model else 1
    progress = Progress(None, "calibrating Pre-LN", unit="round", log_every=10.0, file=sys.stderr)
    rates: list[float] = []
    timed, stopped = 0.0, ""
    for r in itertools.count(1):
        seconds = timed_round(baseline, accumulate, device)
        progress.update(r, phase="warm-up" if r <= warmup else "timed")
        if r <= warmup:
            continue
        rates.append(accumulate / seconds)
        timed += seconds
        stopped = stop_reason(rates, timed, target, max_seconds, seed)
        if stopped:
            break
    progress.close(stopped=stopped)
    compiled = baseline.compiled
    del baseline  # its weights, optimiser state and compiled graphs: the run that follows needs the memory
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    interval = median_interval(np.asarray(rates), seed)
    env = {"torch": str(torch.__version__), "cuda": torch.version.cuda, "host": platform.node()}
    return Calibration(
        device=device_name(device),
        rate=interval.diff,
        low=interval.low,
        high=interval.high,
        rounds=len(rates),
        seconds=round(timed, 2),
        stopped_by=stopped,
        arch=arch.preset,
        microbatch=microbatch,
        seq_len=arch.seq_len,
        precision=precision_name(dtype),
        compiled=compiled,
        accumulate=accumulate,
        date=now_iso(),
        **env,
    )


def timed_round(c: Contender, accumulate: int, device: torch.device) -> float:
    """Seconds of `accumulate` microbatches and one update of the trainer's step (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(accumulate):
        c.train_step.backward(None, 1.0 / accumulate)  # the batch is fixed: the contender's loss holds it
    c.train_step.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def stop_reason(rates: list[float], timed: float, target: float, max_seconds: float, seed: int) -> str:
    """ "" while more rounds are wanted; "target" once the interval is within +-target; "time cap"."""
    if len(rates) >= MIN_ROUNDS:
        interval = median_interval(np.asarray(rates), seed)
        if max(interval.high - interval.diff, interval.diff - interval.low) <= target * interval.diff:
            return "target"
    if timed >= max_seconds and len(rates) >= 2:
        return "time cap"
    return ""
