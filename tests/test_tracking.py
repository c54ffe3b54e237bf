"""Experiment trackers: TensorBoard for real (its event files against metrics.jsonl), W&B and MLflow through
stand-ins that record the calls, a missing package, GLUE's per-epoch rows."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from conftest import pretrain_args, smoke_config

from cramming_simple import tracking
from cramming_simple.cli import main
from cramming_simple.train.loop import pretrain

pytest.importorskip("tensorboard", reason="TensorBoard is the tested tracker (pip install 'cramming-simple[dev]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def scalars(tb: Path) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(tb))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_scalars_equal_metrics_jsonl_also_after_a_resume(smoke_cache, tmp_path):
    cfg = smoke_config(smoke_cache, "preln", 4.0, "impl.log_seconds=1", "impl.tracker=tensorboard", name="tb")
    pretrain(cfg, tmp_path)
    run = tmp_path / "tb"
    resumed = smoke_config(smoke_cache, "preln", 7.0, "impl.log_seconds=1", "impl.tracker=tensorboard", name="tb")
    summary = json.loads((run / "summary.json").read_text())
    summary["completed"] = False  # a run stopped early resumes from its checkpoint
    (run / "summary.json").write_text(json.dumps(summary))
    pretrain(resumed, tmp_path, resume=True)

    logged = scalars(run / tracking.TB_DIR)
    rows = metrics(run)
    train = {r["microbatch_steps"]: r["loss"] for r in rows if r.get("kind") is None}
    evals = {r["microbatch_steps"]: r["eval_loss"] for r in rows if r.get("kind") == "eval"}
    assert len(train) >= 5 and len(evals) >= 2
    assert logged["train/loss"].keys() == train.keys()  # nothing redone is logged twice
    for step, loss in train.items():
        assert logged["train/loss"][step] == pytest.approx(loss, rel=1e-6)
    assert logged["eval/eval_loss"] == pytest.approx(evals, rel=1e-6)
    assert {"train/lr", "train/batch_size", "train/tokens_per_s"} <= logged.keys()


def test_a_tensorboard_resume_keeps_the_rows_at_the_checkpoint_step(tmp_path):
    """metrics.jsonl keeps a resumed run's rows up to and including the checkpoint's step, and so must TensorBoard
    (a row logged exactly at that step, train or eval, is not logged again); later ones are redone and replaced."""
    with tracking.Trackers(["tensorboard"], tmp_path, "tb", {}) as t:
        for step in range(1, 8):
            t.log({"loss": float(step)}, step, "train")
        t.log({"eval_loss": 5.5}, 5, "eval")
        t.log({"eval_loss": 7.5}, 7, "eval")
    with tracking.Trackers(["tensorboard"], tmp_path, "tb", {}, resume_step=5) as t:  # the checkpoint: step 5
        t.log({"loss": 60.0}, 6, "train")
    logged = scalars(tmp_path / tracking.TB_DIR)
    assert logged["train/loss"] == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0, 5: 5.0, 6: 60.0}
    assert logged["eval/eval_loss"] == {5: 5.5}


def test_a_missing_tracker_package_fails_at_the_start_with_the_install_line(smoke_cache, tmp_path, monkeypatch, capsys):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    cache = tmp_path / "cache"
    assert main(pretrain_args(cache, tmp_path / "runs", "impl.tracker=[tensorboard,wandb]")) == 2
    err = capsys.readouterr().err
    assert "pip install 'cramming-simple[wandb]'" in err and len(err.strip().splitlines()) == 1
    assert not cache.exists() and not (tmp_path / "runs").exists()
    assert main(pretrain_args(cache, tmp_path / "runs", "impl.tracker=comet")) == 2
    assert "unknown tracker(s) ['comet']" in capsys.readouterr().err


class FakeRun:
    def __init__(self, log: list, **kwargs):
        self.log_calls, self.kwargs = log, kwargs
        self.id = kwargs.get("id") or "run-1"
        self.info = types.SimpleNamespace(run_id=kwargs.get("run_id") or "mlflow-1")

    def log(self, values, step):
        self.log_calls.append(("log", values, step))

    def finish(self):
        self.log_calls.append(("finish",))


def test_wandb_and_mlflow_get_the_rows_and_resume_the_same_run(tmp_path, monkeypatch):
    """The adapters' contract, through stand-ins for the two packages (neither is a test dependency)."""
    calls: list = []
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: calls.append(("init", kw)) or FakeRun(calls, **kw)
    mlflow = types.ModuleType("mlflow")
    mlflow.start_run = lambda **kw: calls.append(("start_run", kw)) or FakeRun(calls, **kw)
    mlflow.log_params = lambda params: calls.append(("params", params))
    mlflow.log_metrics = lambda values, step: calls.append(("metrics", values, step))
    mlflow.end_run = lambda: calls.append(("end_run",))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)

    config = {"block": "sas", "train": {"lr": 0.003}}
    with tracking.Trackers(["wandb", "mlflow"], tmp_path, "sas-24h", config) as t:
        t.log({"loss": 7.5, "kind": None, "microbatch_steps": 10, "grad_norm": None, "lr": 1e-3}, 10, "train")
    init = next(kw for c, kw in (x[:2] for x in calls) if c == "init")
    assert init["name"] == "sas-24h" and init["config"] == config and init["id"] is None and init["resume"] == "allow"
    assert ("log", {"train/loss": 7.5, "train/lr": 1e-3}, 10) in calls
    assert ("params", {"block": "sas", "train.lr": "0.003"}) in calls
    assert ("metrics", {"train/loss": 7.5, "train/lr": 1e-3}, 10) in calls
    assert ("finish",) in calls and ("end_run",) in calls
    assert json.loads((tmp_path / tracking.IDS).read_text()) == {
        "wandb:pretrain": "run-1",
        "mlflow:pretrain": "mlflow-1",
    }

    calls.clear()  # a resume: the same ids go back to the trackers
    tracking.Trackers(["wandb", "mlflow"], tmp_path, "sas-24h", config, resume_step=10).close()
    assert ("init", "run-1") in [(c[0], c[1].get("id")) for c in calls if c[0] == "init"]
    assert ("start_run", "mlflow-1") in [(c[0], c[1].get("run_id")) for c in calls if c[0] == "start_run"]
    assert not any(c[0] == "params" for c in calls)  # an MLflow run's parameters are logged once


def test_wandb_offline_logs_without_a_network_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="W&B is an optional tracker (pip install 'cramming-simple[wandb]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    with tracking.Trackers(["wandb"], tmp_path, "preln-smoke", {"block": "preln"}) as t:
        t.log({"loss": 3.0}, 5, "train")
    run_id = json.loads((tmp_path / tracking.IDS).read_text())["wandb:pretrain"]
    with tracking.Trackers(["wandb"], tmp_path, "preln-smoke", {"block": "preln"}, resume_step=5) as t:
        t.log({"loss": 2.0}, 9, "train")
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(f"-{run_id}" in name for name in runs), (runs, run_id)  # one run, continued
