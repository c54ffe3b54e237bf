"""A cluster you can walk away from (README, "On a cluster"): typed `--slurm` options with defaults by kind, one
line and exit 2 for bad input, temporaries named by host, one definition of "GLUE done", and GLUE jobs that
requeue only after progress. The sweeps themselves run on the real one-node Slurm in test_sweep.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from test_sweep import slurm_missing

from cramming_simple.cli import main
from cramming_simple.config import ConfigError
from cramming_simple.glue.config import load_protocol, protocol_hash
from cramming_simple.runs import GLUE, MODEL, glue_result, model_hash
from cramming_simple.runtime import remove_stale_temporaries, write_json, write_temporary, writer_tag
from cramming_simple.runtime.files import HOST
from cramming_simple.sweep.job import Job
from cramming_simple.sweep.options import SlurmOptions
from cramming_simple.sweep.plan import SweepConfig, plan, run_name


def test_slurm_options_are_typed_and_go_to_their_kind_of_job_with_defaults_by_kind():
    options = SlurmOptions.parse(
        [
            "partition=gpu",
            "gpus_per_node=8",
            "nodes=2",
            "setup=module load cuda/12.4",
            "setup=source .venv/bin/activate",
            "srun_args=--cpu-bind=none --mpi=pmix",
            "pretrain.exclusive=true",
            "glue.time=120",
            "additional_parameters.reservation=lab",
            "glue.additional_parameters.qos=short",
            "python=apptainer exec image.sif python",
        ]
    )
    pretrain, glue, report = (options.parameters(kind, budget_hours=24) for kind in ("pretrain", "glue", "report"))
    # the budget's 24 h plus a margin (x 1.15 + 30 min), not two days for everything
    assert pretrain["timeout_min"] == 1686 and glue["timeout_min"] == 120 and report["timeout_min"] == 60
    assert pretrain["nodes"] == 2 and "nodes" not in glue and "nodes" not in report  # plain nodes: pretraining's
    assert pretrain["gpus_per_node"] == 8 and glue["gpus_per_node"] == 1 and "gpus_per_node" not in report
    assert pretrain["cpus_per_task"] == 64 and glue["cpus_per_task"] == 8  # 8 CPUs per GPU unless given
    assert pretrain["slurm_exclusive"] is True and "slurm_exclusive" not in glue  # #SBATCH --exclusive
    assert pretrain["slurm_setup"] == ["module load cuda/12.4", "source .venv/bin/activate"]  # in order
    assert pretrain["slurm_srun_args"] == ["--cpu-bind=none", "--mpi=pmix"]  # shell words, not characters
    assert pretrain["slurm_additional_parameters"] == {"reservation": "lab"}
    assert glue["slurm_additional_parameters"] == {"reservation": "lab", "qos": "short"}
    assert options.executor("pretrain") == {
        "slurm_max_num_timeout": 30,
        "slurm_python": "apptainer exec image.sif python",
    }
    assert options.executor("glue")["slurm_max_num_timeout"] == 3  # a GLUE job that times out 3 times is stuck
    assert "slurm_exclusive" not in SlurmOptions.parse(["exclusive=false"]).parameters("pretrain", 1)
    assert SlurmOptions.parse(["exclusive=user"]).parameters("pretrain", 1)["slurm_exclusive"] == "user"
    for bad, said in (
        (["time=abc"], "time=abc: an integer (minutes)"),
        (["gpus_per_node=0"], "must be positive"),
        (["use_srun=maybe"], "true or false"),
        (["gpu.time=5"], "a prefix names a kind of job"),
        (["nope=1"], "not an option here"),
        (["dependency=afterok:1"], "the sweep sets dependency"),
        (["additional_parameters.dependency=x"], "the sweep sets --dependency itself"),
        (["partition"], "KEY=VALUE"),
        (["tasks_per_node=8", "gpus_per_node=8"], "tasks_per_node must be 1 with GPUs"),
    ):
        with pytest.raises(ConfigError, match=re.escape(said)):
            SlurmOptions.parse(bad)


@pytest.mark.parametrize(
    "args, said",
    [
        (["sweep", "--blocks", "preln", "--seeds", "x"], "--seeds takes a comma list of integers"),
        (["sweep", "--blocks", "preln", "--launcher", "slurm", "--slurm", "time=abc"], "time=abc: an integer"),
        (["sweep", "--blocks", "preln", "train.betas=[0.9"], "cannot read 'train.betas=[0.9'"),
        (["pretrain", "--block", "preln", "--budget", "smoke", "train.betas=[0.9"], "cannot read 'train.betas=[0.9'"),
        (["pretrain", "--block", "preln", "--budget", "smoke", "--name", ""], "--name must be a folder name"),
        (["pretrain", "--block", "preln", "--budget", "smoke", "--name", "a/b"], "--name must be a folder name"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, said, tmp_path, capsys):
    assert main([*args, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err


def test_a_temporary_of_another_hosts_writer_survives_cleanup(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that ran and ended: on this host, its temporaries are stale
    tmp = write_temporary(tmp_path / "result.json", lambda f: f.write(b"{}"))
    assert re.fullmatch(rf"\.result\.json\.{os.getpid()}-[0-9a-f]{{6}}@{re.escape(HOST)}\.tmp", tmp.name), tmp.name
    assert writer_tag() == f"{os.getpid()}@{HOST}"
    mine_dead = tmp_path / f".seed1.json.{pid}-0a1b2c@{HOST}.tmp"
    legacy_dead = tmp_path / f".seed2.json.{pid}-0a1b2c.tmp"  # before hosts were named: this host's
    other = tmp_path / f".seed3.json.{pid}-0a1b2c@gpu-node07.cluster.local.tmp"  # that PID means nothing here
    other_partial = tmp_path / f"0123abcd.partial{pid}@gpu-node07"
    mine_partial = tmp_path / f"4567abcd.partial{pid}@{HOST}"
    for path in (mine_dead, legacy_dead, other, other_partial, mine_partial):
        path.write_bytes(b"half")
    removed = remove_stale_temporaries(tmp_path, dead_only=True)
    assert sorted(removed) == sorted([mine_dead, legacy_dead, mine_partial])
    assert tmp.exists() and other.exists() and other_partial.exists()  # a live writer's, another node's
    assert set(remove_stale_temporaries(tmp_path)) == {tmp, other, other_partial}  # holding the folder's lock: all


def test_glue_of_a_retrained_model_is_planned_again(pretrained_run, tmp_path):
    """`glue` and the planner share one "done": this protocol on this model. After `pretrain --resume
    --extend-budget` the weights differ, so the old results do not count (they used to, in the sweep only)."""
    cfg = SweepConfig(blocks=["preln"], seeds=[0], budget="smoke", runs_dir=tmp_path, protocol="smoke", tasks="rte")
    run = tmp_path / run_name("preln", "smoke", 0)
    shutil.copytree(pretrained_run, run)
    _, protocol = load_protocol("smoke")
    assert [j.name for j in plan(cfg)] == [f"{run.name}/rte", "report"]
    for seed in protocol.seeds:
        record = {"status": "ok", "protocol_hash": protocol_hash(protocol), "model_hash": model_hash(run / MODEL)}
        write_json(glue_result(run / GLUE, "rte", seed), record)
    assert [j.name for j in plan(cfg)] == ["report"]  # done: GLUE has nothing to redo, nor does the sweep
    weights = run / MODEL / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b" ")  # the model trained on: other weights, another hash
    assert [j.name for j in plan(cfg)] == [f"{run.name}/rte", "report"]


def test_a_glue_job_at_its_time_limit_requeues_only_after_progress(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    run = tmp_path / "run"
    job = Job("glue", "run/rte", ["glue", str(run), "--tasks", "rte"], run / "logs")
    job.started = time.time()
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 120))  # the warning came with the limit
    assert job.checkpoint() is None  # no new result since it started: a requeue would time out the same way
    write_json(glue_result(run / GLUE, "rte", 1), {"status": "ok"})
    assert job.checkpoint() is not None  # a seed finished: the requeue goes on from there
    (run / GLUE / "rte" / "seed1.json").unlink()
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 3600))  # an hour left: a preemption
    assert job.checkpoint() is not None
    report = Job("report", "report", ["report"], tmp_path / "report" / "logs")
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 60))
    assert report.checkpoint() is None


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


@pytest.mark.skipif(slurm_missing() is not None, reason=str(slurm_missing()))
def test_status_merges_every_record_and_a_failed_duplicate_does_not_hide_a_queued_job(tmp_path, capsys):
    """A resubmission's duplicate that failed (on the run lock) is the newest record of its job; the job the
    first submission queued is still pending in Slurm, and that is what --status shows."""
    runs = tmp_path / "runs"
    cfg = SweepConfig(["preln"], [0], "smoke", runs, "smoke", "rte")
    held = subprocess.run(["sbatch", "--parsable", "--hold", "--wrap", "true"], capture_output=True, text=True)
    job_id = held.stdout.strip().split(";")[0]
    assert held.returncode == 0 and job_id, held.stderr
    try:
        base = {"launcher": "slurm", "sweep": cfg.describe()}
        first = [{"name": "preln-smoke-s0", "kind": "pretrain", "slurm_id": job_id, "log": None}]
        duplicate = [{"name": "preln-smoke-s0", "kind": "pretrain", "slurm_id": "999999", "log": None}]
        write_json(runs / ".sweep" / "20260101-000000-1.json", {**base, "jobs": first})
        write_json(runs / ".sweep" / "20260101-000001-2.json", {**base, "jobs": duplicate})
        assert main(["sweep", "--status", str(runs)]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines() if "| preln-smoke-s0 |" in line)
        assert f"| pending | Slurm job {job_id} |" in row, row
    finally:
        subprocess.run(["scancel", job_id], check=False)
