"""Budgeted pretraining: configs, smoke runs of each block family, kill-and-resume, NaN handling."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import pretrain_args, smoke_config
from helpers.runs import metrics, run_cli, wait_for

from cramming_simple.cli import main
from cramming_simple.config import ConfigError
from cramming_simple.folders import load_model
from cramming_simple.model import BLOCKS, MaskedLM
from cramming_simple.presets import list_presets
from cramming_simple.train.checkpoint import load_checkpoint
from cramming_simple.train.config import PretrainConfig, block_recipe
from cramming_simple.train.loop import pretrain

SUMMARY_FIELDS = {
    "block",
    "arch",
    "budget_hours",
    "params",
    "microbatch_steps",
    "tokens",
    "elapsed_s",
    "final_loss",
    "device",
    "torch",
    "world_size",
    "completed",
    "stop_reason",
}


# ------------------------------------------------------------------------------------------ configs


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


# ------------------------------------------------------------------------------------------ smoke runs


# 12 s each; sas and sasp also pretrain end to end in test_faults (sas), test_pretrain's kill test (sasp) and
# test_upload_tokenizer (sas), so `make test` runs Pre-LN here and `make test-all` all three
@pytest.mark.parametrize(
    "block", ["preln", pytest.param("sas", marks=pytest.mark.slow), pytest.param("sasp", marks=pytest.mark.slow)]
)
def test_smoke_run_finishes_within_budget_and_learns(smoke_cache, tmp_path, block):
    seconds = 12.0
    cfg = smoke_config(smoke_cache, block, seconds, "impl.log_seconds=1", "train.batch_max=64", "impl.eval_minutes=0")
    summary = pretrain(cfg, tmp_path)
    run = tmp_path / cfg.name
    assert SUMMARY_FIELDS <= set(summary) and summary == json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["stop_reason"] == "budget" and summary["block"] == block
    assert summary["elapsed_s"] <= seconds * 1.05 + 0.5  # stops at the budget, not a step later
    assert summary["microbatch_steps"] > 10 and summary["tokens"] == summary["microbatch_steps"] * 32 * 128
    rows = metrics(run)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5  # the loss really goes down
    assert all(0 <= r["p"] <= 1.05 and r["batch_size"] % 32 == 0 for r in rows)
    assert rows[-1]["batch_size"] > rows[0]["batch_size"]  # the ramp ran
    model = load_model(run / "model")
    assert isinstance(model, MaskedLM) and model.encoder.block == block
    assert (run / "model" / "tokenizer.json").exists() and (run / "config.yaml").exists()


def test_existing_run_needs_resume_and_completed_run_is_skipped(smoke_cache, tmp_path):
    cfg = smoke_config(smoke_cache, "sas", 2.0)
    first = pretrain(cfg, tmp_path)
    with pytest.raises(ConfigError, match="--resume"):
        pretrain(cfg, tmp_path)
    assert pretrain(cfg, tmp_path, resume=True) == first  # complete: nothing to do


# ------------------------------------------------------------------------------------------ failures


def test_nan_loss_stops_with_nonfinite_reason_and_keeps_the_last_good_checkpoint(smoke_cache, tmp_path, monkeypatch):
    run = tmp_path / "nan-run"
    real_forward = MaskedLM.forward

    def forward(self, *args, **kwargs):  # NaN once a checkpoint after step 0's exists (step 0's is then prev)
        loss = real_forward(self, *args, **kwargs)
        return loss * float("nan") if (run / "checkpoint.prev.pt").exists() else loss

    monkeypatch.setattr(MaskedLM, "forward", forward)
    code = main(
        pretrain_args(
            smoke_cache,
            tmp_path,
            "--name",
            "nan-run",
            "hours=0.0167",
            "impl.checkpoint_minutes=0.01",
            "impl.log_seconds=0.3",
        )
    )
    assert code == 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "nonfinite_loss" and not summary["completed"]
    assert summary["elapsed_s"] < 30  # stopped soon after the NaN, not at the end of the budget
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert 0 < ckpt["state"]["microbatch_steps"] <= summary["microbatch_steps"]
    assert not (run / "model").exists()  # no model is published from a diverged run


def rows(path: Path) -> list[dict]:
    """The complete rows of a JSON-lines file being written (a last line cut short is left out)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def test_sigkill_after_a_checkpoint_then_resume_continues_within_budget(smoke_cache, tmp_path):
    budget_s = 10.0  # the checkpoint comes at 3 s, the kill at 4 s: the resume trains the last 6
    args = pretrain_args(
        smoke_cache,
        tmp_path,
        f"hours={budget_s / 3600}",
        "impl.checkpoint_minutes=0.05",
        "impl.log_seconds=0.5",
        block="sasp",
    )
    run = tmp_path / "sasp-smoke"
    proc = run_cli(args)
    wait_for(run / "checkpoint.prev.pt", proc)  # the interval checkpoint has replaced the one of step 0
    time.sleep(1.0)  # some work after the checkpoint, which the kill loses
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = load_checkpoint(run / "checkpoint.pt")["state"]
    assert 0 < saved["elapsed_s"] < budget_s
    resumed = run_cli([*args, "--resume"])
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    assert "resuming" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["stop_reason"] == "budget"
    assert summary["microbatch_steps"] > saved["microbatch_steps"]
    assert summary["elapsed_s"] <= budget_s * 1.05 + 0.5
    steps = [r["microbatch_steps"] for r in metrics(run)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # the lost work's rows were dropped
    assert any(s <= saved["microbatch_steps"] for s in steps) and steps[-1] > saved["microbatch_steps"]
    # so were the eval rows and diagnostics of the lost work: every eval point once, in both files alike
    evals = metrics(run, "eval")
    diagnostics = [json.loads(line)["microbatch_steps"] for line in (run / "diagnostics.jsonl").open()]
    at = [r["microbatch_steps"] for r in evals]
    assert at == diagnostics == sorted(set(at)) and at[0] == 0
    assert evals[-1]["optimizer_steps"] == summary["optimizer_steps"] and evals[-1]["eval_loss"] == summary["eval_loss"]


def test_sigusr2_writes_a_final_checkpoint_before_exit(smoke_cache, tmp_path):
    """SIGUSR2, Slurm's warning before a time limit, which it sends to every process of a job (unhandled, it
    would kill the run without a checkpoint); SIGTERM takes the same path (test_faults, test_run_identity)."""
    args = pretrain_args(smoke_cache, tmp_path, "hours=1", "impl.log_seconds=0.3")
    run = tmp_path / "preln-smoke"
    proc = run_cli(args)
    wait_for(run / "metrics.jsonl", proc)
    deadline = time.monotonic() + 120
    while not any(r.get("microbatch_steps", 0) > 0 for r in rows(run / "metrics.jsonl")):  # a step taken
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    assert not (run / "checkpoint.prev.pt").exists()  # only step 0's: the interval one (every 30 s) has not come
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "preempted" and not summary["completed"]
    state = load_checkpoint(run / "checkpoint.pt")["state"]
    assert state["microbatch_steps"] == summary["microbatch_steps"] > 0
