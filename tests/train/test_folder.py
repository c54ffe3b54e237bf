"""cramming_simple/train/folder.py: a run folder is its own identity, and its data is the data it trained on: copies,
moves, kills before the first checkpoint, recipe changes on resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pretrain_args, smoke_config
from helpers.runs import metrics, run_cli, summary, wait_for

from cramming_simple.cli import main
from cramming_simple.config import ConfigError
from cramming_simple.data import DataConfig, prepare
from cramming_simple.errors import DiskFullError
from cramming_simple.runs import find_runs
from cramming_simple.runtime import remove_stale_temporaries
from cramming_simple.train import checkpoint
from cramming_simple.train.checkpoint import load_checkpoint
from cramming_simple.train.config import PretrainConfig
from cramming_simple.train.loop import pretrain


def test_a_run_killed_before_its_first_checkpoint_starts_over_under_resume_or_restart(smoke_cache, tmp_path, capsys):
    """What a requeue after a node failure or a SIGKILL in the first checkpoint interval finds: the run's traces
    and no checkpoint. --resume refuses it (a human would have to --restart); --resume-or-restart, which the sweep
    passes, moves it aside (never deleted) and starts over. A live run's folder is never moved: the lock decides."""
    from conftest import pretrain_args

    run = tmp_path / "preln-smoke"
    run.mkdir()
    (run / "config.yaml").write_text("name: preln-smoke\n")
    (run / "metrics.jsonl").write_text('{"microbatch_steps": 3}\n')
    args = pretrain_args(smoke_cache, tmp_path, "hours=0.0005")
    assert main([*args, "--resume"]) == 2
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert main([*args, "--resume-or-restart"]) == 0
    assert "--resume-or-restart moves it aside" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["completed"]
    (aside,) = (tmp_path / ".restarted").iterdir()
    assert (aside / "metrics.jsonl").read_text() == '{"microbatch_steps": 3}\n'
    assert main([*args, "--resume-or-restart"]) == 0  # a finished run stays where it is: nothing to do
    assert len(list((tmp_path / ".restarted").iterdir())) == 1


def test_existing_run_needs_resume_and_completed_run_is_skipped(smoke_cache, tmp_path):
    cfg = smoke_config(smoke_cache, "sas", 2.0)
    first = pretrain(cfg, tmp_path)
    with pytest.raises(ConfigError, match="--resume"):
        pretrain(cfg, tmp_path)
    assert pretrain(cfg, tmp_path, resume=True) == first  # complete: nothing to do


def preempt(args: list[str], run: Path, after: str = "checkpoint.prev.pt") -> None:
    """Start a pretraining process and stop it with SIGTERM (a checkpoint, exit 4) once `after` exists."""
    proc = run_cli(args)
    wait_for(run / after, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out


def pretrain_here(*args: str) -> tuple[int, str]:
    """`cramming-simple pretrain ...` in this process: (exit code, its one error line or '')."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    lines = [line for line in err.getvalue().splitlines() if "error:" in line]
    assert len(lines) <= 1, err.getvalue()
    return code, lines[0] if lines else ""


@pytest.fixture(scope="module")
def stopped_once(smoke_cache, tmp_path_factory):
    """runs/c0: a 4.3-second run stopped by SIGTERM right after it began (a checkpoint, not complete)."""
    runs = tmp_path_factory.mktemp("stopped") / "runs"
    args = pretrain_args(smoke_cache, runs, "--name", "c0", f"hours={HOURS}", "impl.log_seconds=0.3")
    preempt(args, runs / "c0", after="metrics.jsonl")
    return runs, args


HOURS = 0.0012


@pytest.fixture
def stopped(stopped_once, tmp_path):
    """A copy of that stopped run for one test (its own runs/ folder), and its command line."""
    runs, args = stopped_once
    shutil.copytree(runs, tmp_path / "runs", symlinks=True)
    args = list(args)
    args[args.index("--runs-dir") + 1] = str(tmp_path / "runs")
    return tmp_path / "runs", args


def test_a_copied_or_moved_folder_trains_itself_and_is_adopted(stopped):
    runs, args = stopped
    original = runs / "c0"
    before = load_checkpoint(original / "checkpoint.pt")["state"]["microbatch_steps"]
    shutil.copytree(original, runs / "c1", symlinks=True)  # cp -a
    resume = [a for a in args if a not in ("--name", "c0")]
    code, line = pretrain_here(*resume, "--name", "c1", "--resume")
    assert code == 0, line
    copy = summary(runs / "c1")
    assert copy["name"] == "c1" and copy["completed"] and copy["microbatch_steps"] > before
    assert "name: c1" in (runs / "c1" / "config.yaml").read_text()
    # the original did not move: same checkpoint, same summary, not completed
    assert load_checkpoint(original / "checkpoint.pt")["state"]["microbatch_steps"] == before
    assert summary(original)["name"] == "c0" and not summary(original)["completed"]
    steps = [r["microbatch_steps"] for r in metrics(runs / "c1")]
    assert steps == sorted(steps) and steps[-1] > before  # it continued, not from step 0 again
    assert steps.count(0) <= 1

    os.rename(original, runs / "c2")  # mv, then --resume under the new name: continues there
    code, line = pretrain_here(*resume, "--name", "c2", "--resume")
    assert code == 0, line
    assert not original.exists() and summary(runs / "c2")["name"] == "c2" and summary(runs / "c2")["completed"]
    steps = [r["microbatch_steps"] for r in metrics(runs / "c2")]
    assert steps == sorted(steps) and steps.count(0) <= 1


def test_a_run_killed_in_its_first_checkpoint_interval_resumes_from_step_0(smoke_cache, tmp_path):
    """A SIGKILL (a node failure, an OOM kill) before the first interval's checkpoint (every 30 min) costs minutes:
    step 0 is checkpointed before the first step, and --resume continues from it."""
    runs = tmp_path / "runs"
    args = pretrain_args(smoke_cache, runs, "hours=0.0012", "impl.log_seconds=0.2")
    run = runs / "preln-smoke"
    proc = run_cli(args)
    wait_for(run / "metrics.jsonl", proc)  # the eval at step 0, after its checkpoint: none of the 4 s budget spent
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(run / "checkpoint.pt")["state"]["microbatch_steps"] == 0
    code, line = pretrain_here(*args, "--resume")
    assert code == 0, line
    steps = [r["microbatch_steps"] for r in metrics(run)]
    assert steps == sorted(steps) and steps.count(0) <= 1 and summary(run)["completed"] and steps[-1] > 0


def test_a_run_stopped_before_its_first_checkpoint_is_refused_and_restart_moves_it_aside(smoke_cache, tmp_path):
    """Killed before step 0's checkpoint (while its data or model was built): traces and nothing to resume."""
    runs = tmp_path / "runs"
    args = pretrain_args(smoke_cache, runs, "hours=0.001")
    run = runs / "preln-smoke"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: preln-smoke\n")
    rows = '{"microbatch_steps": 0, "kind": "eval"}\n'
    (run / "metrics.jsonl").write_text(rows)
    for extra in ([], ["--resume"]):
        code, line = pretrain_here(*args, *extra)
        assert code == 2 and "--restart" in line, line
        assert (run / "metrics.jsonl").read_text() == rows  # nothing appended
    code, line = pretrain_here(*args, "--restart")
    assert code == 0, line
    (aside,) = (runs / ".restarted").iterdir()
    assert aside.name.startswith("preln-smoke-") and (aside / "metrics.jsonl").read_text() == rows  # kept, not deleted
    steps = [r["microbatch_steps"] for r in metrics(run)]
    assert steps == sorted(steps) and steps.count(0) <= 1 and summary(run)["completed"]
    assert find_runs(runs) == [run]  # the report does not see the folder moved aside


def test_resume_refuses_a_changed_recipe_unless_the_budget_is_extended(stopped):
    runs, args = stopped
    run = runs / "c0"
    config = (run / "config.yaml").read_text()
    for change in (["hours=0.01"], ["train.lr=0.5"]):
        code, line = pretrain_here(*args, "--resume", *change)
        assert code == 2 and "--extend-budget" in line and change[0].split("=")[0] in line, line
    assert (run / "config.yaml").read_text() == config
    code, line = pretrain_here(*args, "--resume", "--budget", "1h")
    assert code == 2 and "budget 'smoke'" in line
    code, line = pretrain_here(*args, "--resume", "impl.log_seconds=0.5")  # how it runs: allowed
    assert code == 0, line
    code, line = pretrain_here(*args, "--resume", "--extend-budget", "hours=0.002")
    assert code == 0, line
    (amendment,) = summary(run)["amendments"]
    assert amendment["changes"] == {"hours": [HOURS, 0.002]}
    assert PretrainConfig.from_run(run).amendments[0]["changes"] == {"hours": [HOURS, 0.002]}
    assert abs(summary(run)["elapsed_s"] - 0.002 * 3600) < 2 and summary(run)["completed"]  # a finished run goes on


def test_the_summary_is_written_with_its_checkpoint_never_beside_another(stopped, monkeypatch):
    """A summary that cannot be written (a full disk) cancels the checkpoint it describes: the two agree."""
    runs, args = stopped
    run = runs / "c0"
    resumed_at = load_checkpoint(run / "checkpoint.pt")["state"]["microbatch_steps"]
    real, refused = checkpoint.write_json, []

    def full_disk(path, obj):  # the summary of any step after the resume point does not fit
        if Path(path).name == "summary.json" and obj["microbatch_steps"] > resumed_at:
            refused.append(obj["microbatch_steps"])
            raise DiskFullError(path, 1000)
        return real(path, obj)

    monkeypatch.setattr(checkpoint, "write_json", full_disk)
    code, _ = pretrain_here(*args, "--resume", "impl.checkpoint_minutes=0.01")
    assert code == 5 and refused  # it trained on, and the next checkpoint's summary did not fit
    assert summary(run)["microbatch_steps"] == load_checkpoint(run / "checkpoint.pt")["state"]["microbatch_steps"]
    assert not list(run.glob(".*.tmp"))


def test_temporaries_of_killed_writers_are_removed_at_the_next_start(stopped, smoke_cache):
    runs, args = stopped
    run = runs / "c0"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (run / f".model.{pid}.tmp").mkdir()
    (run / f".model.{pid}.tmp" / "model.safetensors").write_bytes(b"half")
    os.link(run / "checkpoint.pt", run / f".checkpoint.prev.pt.{pid}.tmp")
    (run / f".checkpoint.pt.{pid}-abc123.tmp").write_bytes(b"half")
    partial = Path(smoke_cache) / f"0123456789ab.partial{pid}"
    partial.mkdir()
    glue = run / "glue" / "rte"
    glue.mkdir(parents=True)
    (glue / f".seed1.predictions.npz.{pid}-abc123.tmp").write_bytes(b"half")
    (glue / f".seed2.predictions.npz.{os.getpid()}-abc123.tmp").write_bytes(b"a live writer's")
    code, line = pretrain_here(*args, "--resume")
    assert code == 0, line
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not os.path.samefile(run / "checkpoint.pt", run / "checkpoint.prev.pt")
    # the data cache and GLUE folders are shared with live processes: only dead writers' leftovers go
    prepare(DataConfig(source="builtin", cache_dir=str(smoke_cache), shard_sequences=1024), 8192, 128)
    assert not partial.exists()
    assert remove_stale_temporaries(run / "glue", recursive=True, dead_only=True) == [
        glue / f".seed1.predictions.npz.{pid}-abc123.tmp"
    ]
    assert (glue / f".seed2.predictions.npz.{os.getpid()}-abc123.tmp").exists()


def test_resume_from_another_folder_reads_the_same_data_and_old_runs_are_refused(smoke_cache, tmp_path, monkeypatch):
    here, elsewhere = tmp_path / "a", tmp_path / "b"
    shutil.copytree(smoke_cache, here / "data")
    elsewhere.mkdir()
    monkeypatch.chdir(here)
    runs = tmp_path / "runs"
    args = [a for a in pretrain_args("data", runs, "hours=0.002", "impl.log_seconds=0.3") if "cache_dir" not in a]
    args.append("data.cache_dir=data")  # relative: recorded as here/data
    proc = run_cli(args)
    wait_for(runs / "preln-smoke" / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    run = runs / "preln-smoke"
    recorded = summary(run)["data"]
    assert recorded["cache"] == str(here / "data") and len(recorded["tokenizer_sha256"]) == 64
    monkeypatch.chdir(elsewhere)
    resume = [a for a in args if not a.startswith("data.cache_dir")]
    code, line = pretrain_here(*resume, "--resume")
    assert code == 0, line
    assert not (elsewhere / "data").exists()  # nothing prepared again here
    assert summary(run)["data"]["tokenizer_sha256"] == recorded["tokenizer_sha256"]

    # a run of an older version recorded a relative cache and no identity: resumed elsewhere it is refused
    config = (run / "config.yaml").read_text().replace(f"cache_dir: {here / 'data'}", "cache_dir: data")
    (run / "config.yaml").write_text(config)
    data = summary(run)
    data["completed"] = False
    (run / "summary.json").write_text(json.dumps(data))
    code, line = pretrain_here(*resume, "--resume", "--extend-budget", "hours=0.003")
    assert code == 2 and "a new tokenizer" in line and "data.cache_dir" in line, line
    assert not (elsewhere / "data").exists()


def test_a_different_tokenizer_under_the_same_key_is_refused_on_resume(stopped, smoke_cache, tmp_path):
    runs, args = stopped
    other = tmp_path / "other-cache"
    shutil.copytree(smoke_cache, other)
    (prepared,) = [p for p in other.iterdir() if (p / "manifest.json").exists()]
    tokenizer = json.loads((prepared / "tokenizer" / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = (next(t for t, i in vocab.items() if i == k) for k in (100, 101))
    vocab[a], vocab[b] = vocab[b], vocab[a]  # a retrained WordPiece that broke a tie the other way
    (prepared / "tokenizer" / "tokenizer.json").write_text(json.dumps(tokenizer))
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest.pop("tokenizer_sha256", None)
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    moved = [a if not a.startswith("data.cache_dir=") else f"data.cache_dir={other}" for a in args]
    code, line = pretrain_here(*moved, "--resume")
    assert code == 2 and "tokenizer differs" in line, line
