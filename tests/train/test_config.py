"""cramming_simple/train/config.py: the shipped budgets, the spec's recipe, overrides and typos, old run configs."""

from __future__ import annotations

import re

import pytest
from conftest import smoke_config

from cramming_simple.config import ConfigError
from cramming_simple.model import BLOCKS
from cramming_simple.presets import list_presets
from cramming_simple.train.config import PretrainConfig, block_recipe


def test_a_run_started_before_heldout_evaluation_resumes_on_its_own_stream(smoke_cache, tmp_path):
    cfg = smoke_config(smoke_cache, "preln", 2.0, name="old")
    run = tmp_path / "old"
    run.mkdir()
    from cramming_simple.config import to_yaml

    text = re.sub(r"^  holdout: \d+\n", "", to_yaml(cfg), flags=re.M)
    assert "holdout" not in text
    (run / "config.yaml").write_text(text)
    assert PretrainConfig.from_run(run).data.holdout == 0
    (run / "config.yaml").write_text(to_yaml(cfg))
    assert PretrainConfig.from_run(run).data.holdout == 2048


@pytest.mark.parametrize("budget", ["24h", "1h", "smoke"])
def test_every_shipped_budget_parses_and_validates(budget):
    for block in BLOCKS:
        cfg = PretrainConfig.from_budget(budget, block)
        assert cfg.train.lr == block_recipe(block).lr and cfg.train.weight_decay == block_recipe(block).weight_decay
        assert cfg.name == f"{block}-{budget}"
    assert set(list_presets("budgets")) >= {"24h", "1h", "smoke"}


def test_24h_budget_is_the_spec_recipe():
    cfg = PretrainConfig.from_budget("24h", "sas")
    assert cfg.hours == 24 and cfg.arch.width == 768 and cfg.arch.depth == 16 and cfg.arch.vocab_size == 32768
    assert (cfg.train.microbatch, cfg.train.batch_max, cfg.train.ramp_end) == (128, 8192, 0.6)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.betas, cfg.train.eps, cfg.train.grad_clip) == (
        3e-3,
        0.1,
        [0.9, 0.98],
        1e-12,
        0.5,
    )
    assert cfg.data.source == "hub-pretokenized" and cfg.data.column == "input_ids" and cfg.train.mask_prob == 0.25
    assert (
        PretrainConfig.from_budget("1h", "sasp-nonorm").hours == 1
        and PretrainConfig.from_budget("1h", "sasp-nonorm").train.lr == 2e-3
    )


def test_overrides_apply_and_typos_fail_listing_valid_keys():
    cfg = PretrainConfig.from_budget("smoke", "preln", ["hours=0.01", "train.lr=2e-3", "arch.depth=3"])
    assert (
        cfg.hours == 0.01 and cfg.train.lr == 2e-3 and cfg.arch.depth == 3 and cfg.arch.width == 128
    )  # tiny preset kept
    assert PretrainConfig.from_budget("24h", "preln", ["arch.preset=tiny"]).arch.width == 128
    with pytest.raises(ConfigError) as err:
        PretrainConfig.from_budget("smoke", "preln", ["train.lrr=1"])
    assert "train.lrr" in str(err.value) and "microbatch" in str(err.value) and "weight_decay" in str(err.value)
    with pytest.raises(ConfigError, match="Valid keys under the top level"):
        PretrainConfig.from_budget("smoke", "preln", ["hourz=1"])
    with pytest.raises(ConfigError, match="heads"):
        PretrainConfig.from_budget("smoke", "preln", ["arch.heads=3"])
    with pytest.raises(ConfigError, match="Valid blocks"):
        PretrainConfig.from_budget("smoke", "pre-ln")
    with pytest.raises(ConfigError, match="Available: 1h, 24h, 24h-published, smoke, smoke-published"):
        PretrainConfig.from_budget("2h", "preln")
