"""cramming_simple/hardware.py: the shipped hardware references and what is refused."""

from __future__ import annotations

import pytest

from cramming_simple.cli import main
from cramming_simple.config import ConfigError
from cramming_simple.hardware import parse, shipped_references
from cramming_simple.reference import PUBLISHED_REFERENCE
from cramming_simple.train.config import PretrainConfig


def test_the_shipped_references_parse_and_agree_with_their_derivations():
    refs = shipped_references()
    assert PUBLISHED_REFERENCE in refs and "rtx3090-notrainnogain" in refs
    for ref in refs.values():
        assert ref.source and ref.derivation and ref.date and ref.arch == "crammed-bert" and ref.seq_len == 128
    ntng = refs["rtx3090-notrainnogain"]  # 0.2253 s per microbatch of 128 (NoTrainNoGain's saved_rsts.py)
    assert ntng.preln_microbatches_per_s == pytest.approx(1 / 0.2253, abs=1e-4) and not ntng.estimate
    he = refs[PUBLISHED_REFERENCE]  # about 600K steps for the fastest block (1.20x Pre-LN) in 24 h, microbatch 64
    assert he.preln_microbatches_per_s == pytest.approx(600_000 / 1.20 / 86_400, abs=1e-3)
    assert he.estimate and he.microbatch == 64
    with pytest.raises(ConfigError, match="Valid keys"):  # a typo in an entry fails at load, naming the fields
        parse({"name": "x", "device": "gpu", "source": "me", "rate": 1.0}, "an entry")


def test_a_reference_measured_at_another_arch_or_microbatch_is_refused_in_one_line(tmp_path, capsys):
    runs = tmp_path / "runs"
    base = ["pretrain", "--block", "preln", "--runs-dir", str(runs)]
    assert main([*base, "--budget", "smoke", "--reference", "rtx3090-notrainnogain"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "measured at arch crammed-bert (the budget's: tiny)" in err[0]
    assert main([*base, "--budget", "24h", "--reference", PUBLISHED_REFERENCE]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "microbatch 64 (the budget's: 128)" in err[0] and "train.microbatch=64" in err[0]
    assert main([*base, "--budget", "smoke", "--reference", "no-such-gpu"]) == 2
    assert "unknown reference 'no-such-gpu'" in capsys.readouterr().err and not runs.exists()
    cfg = PretrainConfig.from_budget("24h", "sas", ["train.microbatch=64"], reference=PUBLISHED_REFERENCE)
    assert cfg.name == f"sas-24h-{PUBLISHED_REFERENCE}" and cfg.reference.reference_rate == pytest.approx(5.787)
