"""cramming_simple/bench/calibrate.py: Pre-LN's rate on this machine, with its interval, saved as a hardware
reference."""

from __future__ import annotations

import pytest
import torch

from cramming_simple import runtime
from cramming_simple.config import ConfigError
from cramming_simple.hardware import USER_ENV, save_reference, shipped_references
from cramming_simple.reference import PUBLISHED_REFERENCE
from cramming_simple.train.schedules import microbatches_per_update


def test_calibrate_measures_pre_ln_with_its_interval_and_saves_it_as_a_reference(double, monkeypatch):
    entry, saved = double["entry"], double["saved"]
    fields = {"name", "device", "preln_microbatches_per_s", "arch", "microbatch", "seq_len", "precision", "compiled"}
    assert fields | {"source", "date", "rate_low", "rate_high"} <= set(entry)
    assert entry["rate_low"] <= entry["preln_microbatches_per_s"] <= entry["rate_high"]
    # auto precision: bf16 where the CPU multiplies bf16 natively (AVX-512 BF16, AMX), else fp32
    here = runtime.precision_name(runtime.autocast_dtype(torch.device("cpu"), "auto"))
    assert (saved.name, saved.arch, saved.microbatch, saved.precision) == ("here", "tiny", 32, here)
    assert saved.preln_microbatches_per_s == entry["preln_microbatches_per_s"]
    monkeypatch.setenv(USER_ENV, str(double["folder"]))
    with pytest.raises(ConfigError, match="a shipped reference has that name"):
        save_reference(shipped_references()[PUBLISHED_REFERENCE])
    assert microbatches_per_update(128, 8192) == 20  # the 24h budget's timed round: 20 microbatches, one update
