"""A cluster you can walk away from (README, "On a cluster"): typed `--slurm` options with defaults by kind, one
line and exit 2 for bad input, temporaries named by host, one definition of "GLUE done", and GLUE jobs that
requeue only after progress. The sweeps themselves run on the real one-node Slurm in test_sweep.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.glue_data import make_glue, sentiment_words, write_tsv
from helpers.slurm import slurm_job_state, slurm_missing, sweep_args

from cramming_simple.cli import main
from cramming_simple.config import ConfigError
from cramming_simple.glue.config import load_protocol, protocol_hash
from cramming_simple.runs import GLUE, MODEL, glue_result, model_hash
from cramming_simple.runtime import remove_stale_temporaries, write_json, write_temporary, writer_tag
from cramming_simple.runtime.files import HOST
from cramming_simple.sweep.job import Job
from cramming_simple.sweep.options import JobOptions, SlurmOptions
from cramming_simple.sweep.plan import SweepConfig, plan, run_name
from cramming_simple.sweep.status import queued


@pytest.fixture(scope="module")
def glue_tsv(pretrained_run, tmp_path_factory):
    from cramming_simple.data.tokenizer import load_tokenizer

    words = sentiment_words(load_tokenizer(pretrained_run / "model"))
    return write_tsv(make_glue({"default": 24}, n_eval=16, words=words), tmp_path_factory.mktemp("cluster-glue"))


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
    # each kind's options are a typed dataclass: values converted by their field's type
    typed = options.by_kind["pretrain"]
    assert isinstance(typed, JobOptions) and typed.exclusive is True and options.by_kind[""].nodes == 2
    assert options.by_kind["glue"].time == 120 and options.by_kind[""].srun_args == ["--cpu-bind=none", "--mpi=pmix"]
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
        (["sweep", "--blocks", "preln", "--max-parallel", "2"], "--max-parallel is for --launcher slurm"),
        (["sweep", "--blocks", "preln", "--launcher", "slurm", "--max-parallel", "0"], "--max-parallel takes a whole"),
        (
            [
                "sweep",
                "--blocks",
                "preln",
                "--launcher",
                "slurm",
                "--max-parallel",
                "2",
                "--slurm",
                "array_parallelism=2",
            ],
            "not both",
        ),
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


@pytest.mark.slow  # about a minute on the local Slurm: every job held, released, and run
@pytest.mark.skipif(slurm_missing() is not None, reason=str(slurm_missing()))
def test_a_sweep_submitted_twice_while_its_jobs_wait_adds_no_job_and_every_job_completes(
    smoke_cache,
    glue_tsv,
    tmp_path,
    caplog,
):
    runs = tmp_path / "runs"
    options = ("--slurm", "cpus_per_task=1", "--slurm", "time=10", "--slurm", "glue.time=5")
    held = ("--slurm", "additional_parameters.hold=true")  # #SBATCH --hold: every job pending until released
    later = ("impl.lock=none",)  # and the scheduler keeps a second job out: every job a singleton of its name
    args = sweep_args(runs, smoke_cache, glue_tsv, "--launcher", "slurm", *options, *held, blocks="preln", later=later)
    assert main(args) == 0
    scripts = list((runs / "preln-smoke-s0" / "logs").glob("*/*_submission.sh"))
    assert scripts and all("#SBATCH --dependency=" in p.read_text() and "singleton" in p.read_text() for p in scripts)
    first = json.loads(sorted((runs / ".sweep").glob("*.json"))[-1].read_text())["jobs"]
    ids = [j["slurm_id"] for j in first]
    assert len(ids) == 3 and all(ids)  # pretraining, its GLUE array of one task, the report
    time.sleep(1)  # the next record's name differs
    caplog.clear()
    assert main(args) == 0  # resubmitted while everything waits in the queue
    said = caplog.text
    assert "adding 0 Slurm job(s) (nothing to redo); 3 already queued or running, left alone" in said, said
    second = json.loads(sorted((runs / ".sweep").glob("*.json"))[-1].read_text())["jobs"]
    assert [(j["slurm_id"], j["outcome"]) for j in second] == [(i, "already queued") for i in ids]
    listed = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout.split("\n")
    mine = {i.split("_")[0] for i in ids}
    ours = [line.split()[1] for line in listed if line.strip() and line.split()[0].split("_")[0] in mine]
    assert len(ours) == len(set(ours)) == 3, listed  # each job name once: the first submission's jobs alone
    subprocess.run(["scontrol", "release", *{i.split("_")[0] for i in ids}], check=True)
    deadline = time.time() + 300
    while queued(ids) and time.time() < deadline:
        time.sleep(2)
    assert {slurm_job_state(i) for i in ids} == {"COMPLETED"}
    assert (runs / "report" / "index.md").exists()


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


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
10.0.0.1@o2ib:/scratch /scratch lustre rw,localflock,lazystatfs 0 0
10.0.0.1@o2ib:/proj /proj lustre rw,noflock 0 0
10.0.0.1@o2ib:/work /work lustre rw,flock 0 0
nfs1:/home /home nfs4 rw,vers=4.2,local_lock=none 0 0
nfs2:/data /data nfs rw,vers=3,nolock 0 0
nfs2:/old /old nfs rw,vers=3,local_lock=flock 0 0
beegfs_nodev /beegfs beegfs rw,cfgFile=/etc/beegfs/beegfs-client.conf 0 0
"""


@pytest.mark.parametrize(
    "folder, said",
    [
        ("/scratch/me/runs/sas-24h", "lustre at /scratch, mounted with localflock"),
        ("/proj/runs", "lustre at /proj, mounted with noflock"),
        ("/work/runs", None),  # Lustre with flock: cluster-wide
        ("/home/me/runs", None),  # NFSv4: its locks are the server's
        ("/data/runs", "nfs at /data, mounted with nolock"),
        ("/old/runs", "nfs at /old, mounted with local_lock=flock"),
        ("/beegfs/runs", "beegfs at /beegfs (BeeGFS locks are node-local"),
        ("/scratchy/runs", None),  # not under /scratch: the root's ext4
    ],
)
def test_filesystems_whose_locks_are_node_local_are_named(folder, said):
    from cramming_simple.runtime import node_local_locks

    found = node_local_locks(folder, MOUNTS)
    assert found == said if said is None else said in found


def test_a_run_folder_with_node_local_locks_is_refused_in_one_line_and_runs_with_impl_lock_none(
    smoke_cache, tmp_path, capsys, monkeypatch
):
    from conftest import pretrain_args

    from cramming_simple.train import folder

    here = node_local = "lustre at /scratch, mounted with localflock"
    monkeypatch.setattr(folder, "node_local_locks", lambda run_dir: here)  # this machine has no Lustre
    args = pretrain_args(smoke_cache, tmp_path, "hours=0.0004")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and node_local in err[0] and "impl.lock=none" in err[0], err
    assert main([*args, "impl.lock=none"]) == 0
    assert "nothing but the scheduler keeps a second process out" in capsys.readouterr().err
    assert not (tmp_path / "preln-smoke" / ".lock").exists()


def test_a_child_that_does_not_stop_after_the_warning_is_killed_and_the_job_requeued_anyway(tmp_path):
    """A hung collective under torchrun, a stuck write: the job waits its grace (the signal's delay less 30 s),
    not forever, then kills the child and requeues; the requeued job resumes from the last checkpoint."""
    pytest.importorskip("submitit")
    job = Job("pretrain", "run", ["pretrain"], tmp_path / "logs", grace_s=1.0)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    job.child = subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE, text=True)
    assert job.child.stdout.readline() == "up\n"  # its SIGTERM handler is set
    again = job.checkpoint()
    assert job.child.wait(timeout=5) == -signal.SIGKILL
    assert again is not None and again.function.grace_s == 1.0  # requeued, with the same grace


def test_a_sweep_checks_its_glue_data_before_anything_runs(smoke_cache, tmp_path, capsys):
    """GLUE data is prepared (from the hub: downloaded once into the cache) or checked (--data-dir) by the sweep
    command itself: a missing task fails now, in one line, not in 8 x N GLUE jobs after a day of pretraining."""
    empty = tmp_path / "glue"
    empty.mkdir()
    args = sweep_args(tmp_path / "runs", smoke_cache, empty, blocks="preln")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--data-dir {empty} holds no GLUE data" in err[0], err
    assert not (tmp_path / "runs" / "preln-smoke-s0").exists() and not (tmp_path / "runs" / ".sweep").exists()


def job_times(job_ids: list[str]) -> list[tuple[str, str, str]]:
    """(start, end, Slurm job name) of each job (an array's elements each) from the job-completion log."""
    bases = {i.split("_")[0] for i in job_ids}
    out = []
    for line in Path("/var/lib/cramming-simple-slurm/jobcomp.txt").read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("JobId") in bases or fields.get("ArrayJobId") in bases:
            out.append((fields["StartTime"], fields["EndTime"], fields["Name"]))
    return sorted(out)


@pytest.mark.slow  # 1-2 min on the local Slurm: two runs and their GLUE one after another
@pytest.mark.skipif(slurm_missing() is not None, reason=str(slurm_missing()))
def test_max_parallel_caps_the_whole_sweep_pretraining_and_glue_together(smoke_cache, glue_tsv, tmp_path):
    """--max-parallel 1 on a node with 2 CPUs, jobs of 1 CPU each: without the cap the second run's pretraining
    runs beside the first (one array) or beside the first run's GLUE; with it, no two jobs ever overlap."""
    runs = tmp_path / "runs"
    options = ("--slurm", "cpus_per_task=1", "--slurm", "time=10", "--slurm", "glue.time=5", "--max-parallel", "1")
    args = sweep_args(runs, smoke_cache, glue_tsv, "--launcher", "slurm", "--wait", *options)
    args[args.index("--tasks") + 1] = "rte,mrpc"  # a GLUE array of two elements per run
    assert main(args) == 0
    record = json.loads(next((runs / ".sweep").glob("*.json")).read_text())
    assert record["sweep"]["max_parallel"] == 1
    ids = [j["slurm_id"] for j in record["jobs"] if j["kind"] != "report"]
    assert len(ids) == 6 and {slurm_job_state(i) for i in ids} == {"COMPLETED"}
    times = job_times(ids)
    assert len(times) == 6 and len({name for *_, name in times}) == 1 and "-lane0" in times[0][2], times
    for (_, end, _), (start, _, _) in zip(times, times[1:]):
        assert start >= end, times  # one job at a time (times to the second, ISO: compared as text)
    scripts = list(runs.glob("*/logs/*/*_submission.sh")) + list(runs.glob(".sweep/logs/*/*_submission.sh"))
    laned = [p.read_text() for p in scripts if "-lane0" in p.read_text()]
    assert len(laned) == 4 and all("singleton" in text for text in laned)  # 2 pretraining jobs, 2 GLUE arrays


def slurm_accounting() -> str | None:
    """Why sacct cannot answer here (no Slurm, or a Slurm without accounting storage), or None."""
    if slurm_missing() is not None:
        return slurm_missing()
    done = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True)
    said = (done.stderr.strip().splitlines() or [""])[-1]
    return None if done.returncode == 0 else f"no Slurm accounting ({said}); bash .ci/local-slurm accounting"


@pytest.mark.slow  # 1 min; needs `bash .ci/local-slurm accounting` (slurmdbd), which CI does not start
@pytest.mark.skipif(slurm_accounting() is not None, reason=str(slurm_accounting()))
def test_status_says_how_a_job_ended_from_slurms_accounting(smoke_cache, glue_tsv, tmp_path, capsys):
    """A pretraining job cancelled while it trains, and its GLUE job cancelled by Slurm for it
    (kill-on-invalid-dep): squeue no longer knows them; sacct says CANCELLED, and --status shows it with the log."""
    runs = tmp_path / "runs"
    options = ("--slurm", "cpus_per_task=1", "--slurm", "time=10", "--slurm", "glue.time=5")
    args = sweep_args(runs, smoke_cache, glue_tsv, "--launcher", "slurm", *options, blocks="preln", later=("hours=1",))
    assert main(args) == 0
    jobs = json.loads(next((runs / ".sweep").glob("*.json")).read_text())["jobs"]
    pretrain = next(j for j in jobs if j["kind"] == "pretrain")
    deadline = time.time() + 120
    while not (runs / "preln-smoke-s0" / "metrics.jsonl").exists():  # training
        assert time.time() < deadline, "pretraining did not start within 2 minutes"
        time.sleep(0.5)
    subprocess.run(["scancel", pretrain["slurm_id"]], check=True)
    deadline = time.time() + 120
    while queued([j["slurm_id"] for j in jobs if j["kind"] != "report"]):
        assert time.time() < deadline, "the cancelled jobs stayed in the queue"
        time.sleep(1)
    subprocess.run(["scancel", *(j["slurm_id"] for j in jobs)], check=False)  # the report, still waiting
    capsys.readouterr()
    assert main(["sweep", "--status", str(runs)]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("|") > 4}
    assert (
        "| cancelled |" in rows["preln-smoke-s0"]
        and f"Slurm job {pretrain['slurm_id']}: CANCELLED" in rows["preln-smoke-s0"]
    ), rows
    assert pretrain["log"] in rows["preln-smoke-s0"]
    assert "| cancelled |" in rows["preln-smoke-s0/rte"], rows  # never started: Slurm cancelled it for its run
