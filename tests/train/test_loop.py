"""cramming_simple/train/loop.py: budgeted pretraining: smoke runs of each block family, signals, kill-and-resume,
NaN."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import pretrain_args, smoke_config
from helpers.runs import metrics, run_cli, wait_for

from cramming_simple.cli import main
from cramming_simple.folders import load_model
from cramming_simple.model import MaskedLM
from cramming_simple.train import loop
from cramming_simple.train.checkpoint import load_checkpoint
from cramming_simple.train.config import PretrainConfig
from cramming_simple.train.loop import pretrain


def test_sigterm_stops_at_the_next_microbatch_and_checkpoints_the_last_boundary(smoke_cache, tmp_path):
    """Late in the 24h ramp an optimiser step is 64 microbatches, longer than a Slurm grace time. A stop signal
    mid-step stops at the next microbatch: the checkpoint is the last boundary's state, the dropped microbatches
    are read again after the resume, and the clock is rewound so that they are charged once."""
    from conftest import pretrain_args
    from helpers.runs import run_cli, wait_for

    from cramming_simple.train.checkpoint import load_checkpoint

    ramp = ("train.microbatch=2", "train.batch_max=512", "train.ramp_end=0.0001")  # 256 microbatches a step at once
    args = pretrain_args(smoke_cache, tmp_path, "hours=1", *ramp, "impl.log_seconds=0.2", "impl.eval_minutes=0")
    run = tmp_path / "preln-smoke"
    proc = run_cli(args)
    wait_for(run / "metrics.jsonl", proc)
    time.sleep(1.0)  # well inside an optimiser step of 256 microbatches
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    dropped = re.search(r"stopping between microbatches: the (\d+) microbatch\(es\) of the unfinished", out)
    assert dropped and int(dropped.group(1)) >= 1, out
    state = load_checkpoint(run / "checkpoint.pt")["state"]
    assert state["tokens"] == state["microbatch_steps"] * 2 * 128  # rewound together
    assert 0 < state["elapsed_s"] < 60
    more = f"hours={(state['elapsed_s'] + 2) / 3600}"
    assert main([*args, "--resume", "--extend-budget", more]) == 0
    done = json.loads((run / "summary.json").read_text())
    assert done["completed"] and done["microbatch_steps"] > state["microbatch_steps"]


def test_pretraining_records_eval_loss_diagnostics_and_snapshots_outside_the_budget(smoke_cache, tmp_path):
    seconds = 6.0
    cfg = smoke_config(smoke_cache, "sas", seconds, "impl.eval_minutes=0.03", "impl.keep_at=[0.5]", "data.holdout=128")
    summary = pretrain(cfg, tmp_path)
    run = tmp_path / cfg.name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    train = [r for r in rows if "kind" not in r]
    assert train and all("loss" in r for r in train)
    # the first eval scores the model at init, the last one the final model (the weights after the last update)
    assert evals[0]["microbatch_steps"] == 0 and evals[-1]["optimizer_steps"] == summary["optimizer_steps"]
    assert len(evals) >= 3 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert summary["eval_loss"] == evals[-1]["eval_loss"] and summary["eval_sequences"] == 128
    # evaluation time is paused time: the budget is still met, with the eval seconds on top
    assert summary["eval_s"] > 0 and summary["elapsed_s"] <= seconds * 1.05 + 0.5
    diagnostics = [json.loads(line) for line in (run / "diagnostics.jsonl").read_text().splitlines()]
    assert [d["microbatch_steps"] for d in diagnostics] == [e["microbatch_steps"] for e in evals]
    layer = diagnostics[-1]["layers"][1]
    assert {"cos", "kurtosis", "norm", "entropy", "attn_in_cos", "attn_out_cos", "scalars"} <= set(layer)
    assert len(layer["entropy"]) == cfg.arch.heads and {"beta_sa", "alpha_ff", "beta_ff", "attn.alpha"} <= set(
        layer["scalars"]
    )
    assert {"attn.value_alpha", "attn.value_beta"} <= set(diagnostics[-1]["layers"][0]["scalars"])
    snap = summary["snapshots"]["0.50"]
    assert snap["dir"] == "model@0.50" and 0 < snap["microbatch_steps"] < summary["microbatch_steps"]
    assert abs(snap["elapsed_s"] - 0.5 * seconds) < 1.5
    assert isinstance(load_model(run / "model@0.50"), MaskedLM)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (the kernel would drop the run lock too)."""


def test_a_run_killed_after_its_last_checkpoint_resumes_without_a_step_more(smoke_cache, tmp_path, monkeypatch):
    cfg = smoke_config(smoke_cache, "preln", 5.0, "impl.log_seconds=1")
    run = tmp_path / cfg.name

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(loop, "save_model", killed)  # killed after the final checkpoint, before model/ is published
    with pytest.raises(Killed):
        pretrain(cfg, tmp_path)
    monkeypatch.undo()
    ckpt = load_checkpoint(run / "checkpoint.pt")["state"]
    after_kill = json.loads((run / "summary.json").read_text())  # written with the checkpoint: they agree
    assert not after_kill["completed"] and after_kill["microbatch_steps"] == ckpt["microbatch_steps"] > 0
    assert after_kill["elapsed_s"] == ckpt["elapsed_s"] and after_kill["final_loss"] == ckpt["last_loss"]

    summary = pretrain(cfg, tmp_path, resume=True)
    assert summary["completed"] and summary["stop_reason"] == "budget"
    assert summary["microbatch_steps"] == ckpt["microbatch_steps"]  # the budget was spent: no extra step
    assert summary["elapsed_s"] - ckpt["elapsed_s"] < 0.1 and summary["final_loss"] == ckpt["last_loss"]
    assert (run / "model" / "model.safetensors").exists()


def test_the_final_loss_never_comes_from_a_handful_of_microbatches(smoke_cache, tmp_path):
    cfg = smoke_config(smoke_cache, "preln", 4.0, "impl.log_seconds=1.5")
    summary = pretrain(cfg, tmp_path)
    rows = metrics(tmp_path / cfg.name)
    window = rows[-1]["microbatch_steps"] - (rows[-2]["microbatch_steps"] if len(rows) > 1 else 0)
    state = load_checkpoint(tmp_path / cfg.name / "checkpoint.pt")["state"]
    assert state["last_loss_steps"] >= window and summary["final_loss"] == state["last_loss"]


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


# 12 s each; sas and sasp also pretrain end to end in train/test_checkpoint.py (sas), the kill test below (sasp)
# and e2e/test_upload_tokenizer.py (sas), so `make test` runs Pre-LN here and `make test-all` all three
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
    would kill the run without a checkpoint); SIGTERM takes the same path (train/test_checkpoint.py,
    train/test_folder.py)."""
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


def test_the_published_pretraining_stops_at_its_microbatch_cap(smoke_cache, tmp_path):
    from conftest import smoke_config

    from cramming_simple.train.loop import pretrain

    cfg = smoke_config(smoke_cache, "preln", 60.0, "train.max_microbatches=6", "impl.log_seconds=0.5", name="capped")
    summary = pretrain(cfg, tmp_path)
    assert summary["completed"] and summary["stop_reason"] == "max_microbatches" and summary["microbatch_steps"] == 6
    assert summary["elapsed_s"] < 60 and (tmp_path / "capped" / "model" / "config.json").exists()
    assert PretrainConfig.from_budget("24h-published", "sas").train.max_microbatches == 900_000
    assert PretrainConfig.from_budget("24h", "sas").train.max_microbatches is None
