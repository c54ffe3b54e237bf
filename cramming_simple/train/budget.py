"""A budget in hours of a reference device made into hours here (hardware.py, docs/recipe.md "Budgets on other
hardware"): the calibration a run makes before training, or shares with the other runs of a sweep.

A run with `--reference` and no calibration yet (a new run) times Pre-LN at its budget's settings here
(bench.calibrate), and its budget becomes reference hours x reference rate / local rate, recorded in its config
and summary, so that a resumed run keeps it. With a calibration folder (`--calibration-dir`, a sweep's
RUNS_DIR/.calibration/), the first run on a kind of device at a budget's settings measures and writes the rate
there (under a lock); every later run on the same kind reads it: a sweep's blocks all get the same hours.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..config import ConfigError, config_hash
from ..errors import LockedError
from ..hardware import DATA_MARGIN
from ..runtime import FileLock, device_name, read_json, write_json
from .config import PretrainConfig
from .schedules import microbatches_per_update

log = logging.getLogger(__name__)

WAIT_S = 2.0  # how often a run waiting for another's calibration looks again


def calibrated(cfg: PretrainConfig, device: torch.device, folder: Path | None = None) -> PretrainConfig:
    """`cfg` with its reference budget calibrated here (or read from `folder`): local rate, interval and hours."""
    ref = cfg.reference
    settings = calibration_settings(cfg, device)
    if folder is None:
        measured, file = measure(cfg, device, settings).to_dict(), None
    else:
        measured, file = shared(cfg, device, settings, Path(folder))
    local_hours = ref.hours_here(cfg.hours, measured["rate"])
    reference = replace(
        ref,
        local_device=measured["device"],
        local_rate=measured["rate"],
        rate_low=measured["low"],
        rate_high=measured["high"],
        local_hours=local_hours,
        date=measured["date"],
        calibration={
            k: measured[k] for k in ("rounds", "seconds", "stopped_by", "precision", "compiled", "accumulate", "torch")
        }
        | {"file": str(file) if file else None},
    )
    return replace(cfg, reference=reference)  # (the trainer says what the budget became)


def check_one_gpu(cfg: PretrainConfig) -> None:
    """A reference budget is one GPU's, as the paper's: refused under torchrun with several processes."""
    if cfg.reference is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            f"--reference: a reference budget is one GPU's, as the paper's (its rate is one device's); run it without "
            f"torchrun, or give this run plain hours (hours=...) instead of --reference {cfg.reference.name}"
        )


def moved_device(cfg: PretrainConfig, device: str) -> str | None:
    """The warning for a calibrated run that now trains on another device (a requeue onto another GPU model): it
    keeps the hours of its first calibration (the hardware segments of its summary record the move)."""
    ref = cfg.reference
    if ref is None or not ref.calibrated or ref.local_device == device:
        return None
    return (
        f"{cfg.name}: its {ref.name} budget was calibrated on {ref.local_device} ({ref.local_hours:.3g} h); it now "
        f"trains on {device} and keeps those hours (summary.json: hardware)"
    )


def calibration_settings(cfg: PretrainConfig, device: torch.device) -> dict:
    """What a calibration depends on: the device, the arch, microbatch, precision and compile of the budget, and the
    updates per microbatch of its batch ramp. Runs with the same settings share one calibration."""
    t = cfg.train
    return {
        "device": device_name(device),
        "arch": {k: v for k, v in vars(cfg.arch).items() if k not in ("pad_token_id", "dropout", "attention_dropout")},
        "microbatch": t.microbatch,
        "precision": cfg.impl.precision,
        "compile": bool(cfg.impl.compile),
        "accumulate": microbatches_per_update(t.microbatch, t.batch_max, t.ramp_end, t.ramp),
        "torch": str(torch.__version__),
    }


def measure(cfg: PretrainConfig, device: torch.device, settings: dict):
    """Time Pre-LN here at the budget's settings (bench.calibrate); returns the `Calibration`."""
    from ..bench.calibrate import calibrate

    log.info(
        f"calibrating: timing Pre-LN on {settings['device']} at the budget's settings (not budget time; at most "
        f"{cfg.impl.calibration_seconds:g} s of timed rounds, until the rate is known to "
        f"+-{cfg.impl.calibration_target:.0%})"
    )
    return calibrate(
        cfg.arch,
        cfg.train.microbatch,
        device,
        cfg.impl.precision,
        bool(cfg.impl.compile),
        settings["accumulate"],
        cfg.impl.calibration_target,
        cfg.impl.calibration_seconds,
    )


def shared(cfg: PretrainConfig, device: torch.device, settings: dict, folder: Path) -> tuple[dict, Path]:
    """The calibration of this kind of device at these settings in `folder`: read, or measured and written by the
    first run to get there (a lock keeps the others waiting, then they read it)."""
    slug = re.sub(r"[^a-z0-9]+", "-", settings["device"].lower()).strip("-")
    path = folder / f"{slug}-{config_hash(settings)}.json"
    lock = FileLock(path.with_suffix(".lock"), f"the calibration {path}", "calibrating")
    while not path.exists():
        try:
            with lock:
                if not path.exists():  # measured while we waited for the lock
                    write_json(path, {"settings": settings, **measure(cfg, device, settings).to_dict()})
        except LockedError:
            time.sleep(WAIT_S)  # another run is calibrating this kind of device: use its result
    return read_json(path), path  # written atomically; a damaged one is named (delete it to calibrate again)


def sized_data_note(cfg: PretrainConfig) -> str | None:
    """A reference budget's data is sized to what it reads (train.config.sized_data): the line `data` and `pretrain`
    say so with (None when the user chose data.max_sequences, or there is no reference)."""
    ref = cfg.reference
    if ref is None or ref.data_sequences is None or ref.data_sequences != cfg.data.max_sequences:
        return None
    return (
        f"data: {ref.data_sequences:,} sequences, not the whole source: what Pre-LN reads in {cfg.hours:g} h on "
        f"{ref.device} ({ref.reference_rate:g} microbatches of {ref.microbatch} per second) x {DATA_MARGIN:g} for "
        f"faster blocks, plus the held-out {cfg.data.holdout:,} (data.max_sequences=N to choose)"
    )


def data_passes_note(cfg: PretrainConfig, sequences: int) -> str | None:
    """When a reference budget's Pre-LN would read its `sequences` prepared rows (less the held-out slice) more than
    once: how many passes (None: less than one)."""
    ref = cfg.reference
    if ref is None:
        return None
    reads = ref.preln_sequences(cfg.hours)
    train_rows = sequences - min(cfg.data.holdout, sequences // 10)
    if reads <= train_rows:
        return None
    return (
        f"data: the budget's Pre-LN reads about {reads:,.0f} sequences, {reads / train_rows:.1f} passes over these "
        f"{train_rows:,} training sequences (faster blocks more)"
    )
