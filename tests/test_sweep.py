"""Sweeps of (block x seed): the same plan here (`--launcher local`) and on a real one-node Slurm started by
`.ci/local-slurm` (skipped, with the reason, where there is no Slurm; never a mock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.glue_data import make_glue, sentiment_words, write_tsv
from helpers.slurm import slurm_job_state, slurm_missing, sweep_args

from cramming_simple.cli import main
from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.runs import GLUE, glue_result

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def glue_tsv(pretrained_run, tmp_path_factory):
    words = sentiment_words(load_tokenizer(pretrained_run / "model"))
    return write_tsv(make_glue({"default": 24}, n_eval=16, words=words), tmp_path_factory.mktemp("sweep-glue"))


@pytest.mark.slow  # 45 s: the Slurm test below runs the same plan in make test
def test_a_local_sweep_pretrains_fine_tunes_and_reports_and_a_rerun_does_nothing(
    smoke_cache, glue_tsv, tmp_path, capsys
):
    runs = tmp_path / "runs"
    assert main(sweep_args(runs, smoke_cache, glue_tsv)) == 0
    for run in ("preln-smoke-s0", "sasp-smoke-s0"):
        assert json.loads((runs / run / "summary.json").read_text())["completed"]
        assert json.loads(glue_result(runs / run / GLUE, "rte", 1).read_text())["status"] == "ok"
    table1 = (runs / "report" / "table1.md").read_text()
    assert "preln-smoke-s0" in table1 and "sasp-smoke-s0" in table1
    capsys.readouterr()
    assert main([*sweep_args(runs, smoke_cache, glue_tsv), "--status"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("| done |") == 5  # two runs, their two GLUE tasks, the report
    from cramming_simple.sweep import SweepConfig, plan

    cfg = SweepConfig(["preln", "sasp"], [0], "smoke", runs, "smoke", "rte", str(glue_tsv), glue_args=["epochs=1"])
    assert plan(cfg) == []  # everything done, the report too: nothing is planned
    glue_result(runs / "sasp-smoke-s0" / GLUE, "rte", 1).unlink()
    assert [j.name for j in plan(cfg)] == ["sasp-smoke-s0/rte", "report"]  # one missing pair: one job


def test_the_local_launcher_runs_jobs_in_order_and_skips_what_depends_on_a_failure(tmp_path, caplog):
    from cramming_simple.sweep.launch import run_local
    from cramming_simple.sweep.plan import Job

    ran = []

    class Fake(Job):
        def __call__(self, log=None):
            ran.append(self.name)
            if self.name == "b-smoke-s0":
                raise RuntimeError("b-smoke-s0: `cramming-simple pretrain ...` exited with 3")
            return 0

    jobs = [
        Fake("pretrain", "a-smoke-s0", [], tmp_path),
        Fake("pretrain", "b-smoke-s0", [], tmp_path),
        Fake("glue", "a-smoke-s0/rte", [], tmp_path, ["a-smoke-s0"]),
        Fake("glue", "b-smoke-s0/rte", [], tmp_path, ["b-smoke-s0"]),
        Fake("report", "report", [], tmp_path, ["a-smoke-s0", "b-smoke-s0", "a-smoke-s0/rte", "b-smoke-s0/rte"]),
    ]
    assert run_local(jobs) == 1
    assert ran == ["a-smoke-s0", "b-smoke-s0", "a-smoke-s0/rte", "report"]  # the report shows what is missing
    assert "b-smoke-s0/rte: not run, it depends on b-smoke-s0" in caplog.text and "exited with 3" in caplog.text


def test_a_sweep_plans_its_runs_under_the_names_make_all_gives_them(tmp_path):
    from cramming_simple.sweep import SweepConfig, plan

    cfg = SweepConfig(["preln", "sasp"], [0, 1], "smoke", tmp_path, "smoke", "rte,mrpc", glue_args=["epochs=1"])
    jobs = plan(cfg)
    assert [j.name for j in jobs if j.kind == "pretrain"] == [
        "preln-smoke-s0",
        "preln-smoke-s1",
        "sasp-smoke-s0",
        "sasp-smoke-s1",
    ]
    glue = [j for j in jobs if j.kind == "glue"]
    assert (
        len(glue) == 8 and glue[0].after == ["preln-smoke-s0"] and glue[0].logs == tmp_path / "preln-smoke-s0" / "logs"
    )
    assert jobs[-1].kind == "report" and len(jobs[-1].after) == 12 and jobs[-1].argv[-1] == str(tmp_path / "report")
    assert jobs[0].argv[:2] == ["pretrain", "--block"] and "--resume-or-restart" in jobs[0].argv
    assert "train.seed=0" in jobs[0].argv
    with pytest.raises(Exception, match="unknown block"):
        plan(SweepConfig(["prelm"], [0], "smoke", tmp_path))


def test_sweep_status_shows_every_state_with_its_reason_and_log(tmp_path, capsys):
    """Done (and preempted twice), failed with the log's one-line error, skipped behind a failure, running,
    pending, missing: from the run folders and the records that `run_local` writes, with RUNS_DIR alone."""
    import fcntl
    import os
    import platform

    from cramming_simple.glue.config import load_protocol, protocol_hash
    from cramming_simple.runs import LOCK, model_hash
    from cramming_simple.sweep import SweepConfig, plan
    from cramming_simple.sweep.launch import launch
    from cramming_simple.sweep.options import SlurmOptions

    runs = tmp_path / "runs"
    cfg = SweepConfig(["preln", "sasp", "postln"], [0], "smoke", runs, "smoke", "rte", glue_args=["epochs=1"])
    _, protocol = load_protocol("smoke", ["epochs=1"])
    done = runs / "preln-smoke-s0"
    (done / GLUE / "rte").mkdir(parents=True)
    summary = {"completed": True, "microbatch_steps": 120, "slurm": {"job_id": "7", "restarts": 2}}
    (done / "summary.json").write_text(json.dumps(summary))
    (done / "model").mkdir()
    (done / "model" / "model.safetensors").write_bytes(b"weights")
    for seed in protocol.seeds:  # a seeded failure is a result: glue does not redo it, nor does the sweep
        why = {
            "status": "failed",
            "reason": "non-finite training loss at epoch 1",
            "protocol_hash": protocol_hash(protocol),
            "model_hash": model_hash(done / "model"),
        }
        glue_result(done / GLUE, "rte", seed).write_text(json.dumps(why))
    assert not [j for j in plan(cfg) if j.name.startswith("preln")]

    class Failing(type(plan(cfg)[0])):  # a pretraining that stops on a non-finite loss, as the CLI says it
        def __call__(self, log=None):
            log.parent.mkdir(parents=True)
            log.write_text("cramming-simple pretrain: error: the loss is not finite at step 12 (exit 3)\n")
            raise RuntimeError(f"{self.name}: `cramming-simple pretrain ...` exited with 3")

    jobs = [j for j in plan(cfg) if j.name.startswith("sasp")]
    jobs = [Failing(j.kind, j.name, j.argv, j.logs, j.after) for j in jobs]
    assert launch(cfg, jobs, "local", SlurmOptions(), wait=True) == 1
    busy = runs / "postln-smoke-s0"
    busy.mkdir()
    live = {"launcher": "local", "pid": os.getpid(), "host": platform.node(), "sweep": cfg.describe()}
    live["jobs"] = [
        {"name": "postln-smoke-s0", "kind": "pretrain", "outcome": "running", "log": str(busy / "logs" / "x.log")},
        {"name": "postln-smoke-s0/rte", "kind": "glue", "outcome": "pending", "log": None},
    ]
    (runs / ".sweep" / "99999999-999999-1.json").write_text(json.dumps(live))  # the newest record: a live sweep
    with open(busy / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a pretraining process holds the run
        capsys.readouterr()
        assert main(["sweep", "--status", str(runs)]) == 0
    out = capsys.readouterr().out
    shown = {line.split("|")[1].strip(): line for line in out.splitlines()[2:] if line.startswith("|")}
    assert "| done | 120 microbatch steps, preempted 2 time(s) |" in shown["preln-smoke-s0"]
    assert "| failed | seed 1: non-finite training loss at epoch 1 |" in shown["preln-smoke-s0/rte"]
    failed = shown["sasp-smoke-s0"]
    assert "| failed | the loss is not finite at step 12 (exit 3) |" in failed and "sasp-smoke-s0/logs/" in failed
    assert shown["sasp-smoke-s0/rte"].endswith("| failed | depends on sasp-smoke-s0 |  |")
    assert "| running |" in shown["postln-smoke-s0"] and "| pending |" in shown["postln-smoke-s0/rte"]
    assert "| missing | not launched |" in shown["report"]
    assert main(["sweep", "--status", str(tmp_path / "elsewhere")]) == 2
    assert "no sweep was launched into" in capsys.readouterr().err


def test_a_run_on_several_nodes_is_torchrun_per_task(tmp_path):
    import sys

    from cramming_simple.sweep.job import Job

    pretrain = Job("pretrain", "sas-24h-s0", ["pretrain", "--block", "sas"], tmp_path)
    assert pretrain.command({}) == [sys.executable, "-m", "cramming_simple", "pretrain", "--block", "sas"]
    one_node = pretrain.command({"SLURM_NTASKS": "1", "SLURM_GPUS_ON_NODE": "8"})
    assert one_node[1:5] == ["-m", "torch.distributed.run", "--nproc-per-node=8", "--standalone"]
    nodes = {
        "SLURM_NTASKS": "2",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_JOB_ID": "12345",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    two = pretrain.command(nodes)
    assert (
        two[3:8]
        == [
            "--nproc-per-node=8",
            "--nnodes=2",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=gpu07:22345",  # the first node; a port of this job's own
            "--rdzv-id=12345",
        ]
        and two[-4:] == ["cramming_simple", "pretrain", "--block", "sas"]
    )
    assert Job("glue", "sas-24h-s0/rte", ["glue"], tmp_path).command(nodes)[1:3] == ["-m", "cramming_simple"]


NO_SLURM = slurm_missing()


@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_a_slurm_sweep_runs_every_job_as_a_slurm_job(smoke_cache, glue_tsv, tmp_path, capsys):
    runs = tmp_path / "runs"
    options = ("--slurm", "cpus_per_task=1", "--slurm", "time=10", "--slurm", "glue.time=5")
    options += ("--slurm", "setup=echo cs-setup-ran on $(hostname)", "--slurm", "pretrain.exclusive=true")
    args = sweep_args(runs, smoke_cache, glue_tsv, "--launcher", "slurm", "--wait", *options)
    started = time.time()
    assert main(args) == 0
    record = json.loads(next((runs / ".sweep").glob("*.json")).read_text())
    ids = [j["slurm_id"] for j in record["jobs"]]
    assert len(ids) == 5 and all(ids)  # 2 pretraining jobs, 2 GLUE jobs, the report
    states = {i: slurm_job_state(i) for i in ids}
    assert set(states.values()) == {"COMPLETED"}, states  # read from Slurm itself
    assert "sasp-smoke-s0" in (runs / "report" / "table1.md").read_text()
    summary = json.loads((runs / "sasp-smoke-s0" / "summary.json").read_text())
    node = summary["slurm"]["node"]
    assert summary["hardware"] == [{"device": summary["device"], "node": node, "from_step": 0}]
    assert f"on node {node} (Slurm job {summary['slurm']['job_id']})" in (runs / "report" / "index.md").read_text()
    assert all(Path(j["log"]).is_file() for j in record["jobs"])  # a log per job, in its run folder
    for job in record["jobs"]:  # the --slurm setup line ran in every job, before the job's command (stdout)
        assert (
            "cs-setup-ran on " in Path(job["log"]).with_name(Path(job["log"]).name[: -len("err")] + "out").read_text()
        )
    capsys.readouterr()
    assert main(["sweep", "--status", str(runs)]) == 0  # the sweep's record says what to show
    assert capsys.readouterr().out.count("| done |") == 5
    time.sleep(1)  # the next record's name (a time to the second) differs
    assert main(args) == 0  # resubmitting a finished sweep submits nothing
    assert json.loads(sorted((runs / ".sweep").glob("*.json"))[-1].read_text())["jobs"] == []
    lost = glue_result(runs / "sasp-smoke-s0" / GLUE, "rte", 1)
    lost.unlink()  # one pair lost: its job killed before it wrote a result, or the file deleted
    time.sleep(1)
    assert main([a for a in args if a != "--wait"]) == 0  # resubmitted (not run here: the jobs above ran the same)
    again = json.loads(sorted((runs / ".sweep").glob("*.json"))[-1].read_text())["jobs"]
    subprocess.run(["scancel", *(j["slurm_id"] for j in again)], check=True)
    assert [j["name"] for j in again] == ["sasp-smoke-s0/rte", "report"]  # that one job, and the report
    assert time.time() - started < 600


@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_a_submission_slurm_refuses_is_one_line_and_recorded_as_far_as_it_went(smoke_cache, glue_tsv, tmp_path, capsys):
    runs = tmp_path / "runs"
    refused = ("--launcher", "slurm", "--slurm", "glue.partition=nope", "--slurm", "cpus_per_task=1")
    assert main(sweep_args(runs, smoke_cache, glue_tsv, *refused, blocks="preln")) == 2
    *sbatch, err = capsys.readouterr().err.strip().splitlines()  # sbatch's own lines, then ours: one line
    assert all(line.startswith("sbatch: ") for line in sbatch)
    assert "Slurm refused preln-smoke-s0/rte (" in err and "partition" in err and "1 job(s) before it were" in err
    jobs = {j["name"]: j for j in json.loads(next((runs / ".sweep").glob("*.json")).read_text())["jobs"]}
    subprocess.run(["scancel", jobs["preln-smoke-s0"]["slurm_id"]], check=True)  # the one Slurm took
    assert jobs["preln-smoke-s0/rte"]["outcome"] == jobs["report"]["outcome"] == "not submitted"
    assert main(["sweep", "--status", str(runs)]) == 0
    assert "| preln-smoke-s0/rte | glue | missing | not submitted |" in capsys.readouterr().out


@pytest.mark.slow  # 1-2 min: a pretraining job of 20 s of budget, requeued by Slurm in the middle
@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_a_requeued_job_resumes_from_its_checkpoint_with_the_budgets_clock(smoke_cache, glue_tsv, tmp_path, capsys):
    runs = tmp_path / "runs"
    hours = 20 / 3600
    later = (f"hours={hours}", "impl.checkpoint_minutes=0.05")
    args = sweep_args(runs, smoke_cache, glue_tsv, "--launcher", "slurm", blocks="preln", later=later)
    assert main(args) == 0  # submitted, not waited for
    record = json.loads(next((runs / ".sweep").glob("*.json")).read_text())
    pretrain_id = next(j["slurm_id"] for j in record["jobs"] if j["kind"] == "pretrain")
    run = runs / "preln-smoke-s0"
    deadline = time.time() + 120
    while not (run / "checkpoint.prev.pt").exists():  # mid-pretraining: an interval checkpoint after step 0's
        assert time.time() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.5)
    capsys.readouterr()
    assert main(["sweep", "--status", str(runs)]) == 0
    shown = capsys.readouterr().out
    assert "| preln-smoke-s0 | pretrain | running |" in shown and "| preln-smoke-s0/rte | glue | pending |" in shown
    subprocess.run(["scontrol", "requeue", pretrain_id], check=True)  # what a preemption does to the job
    deadline = time.time() + 60
    while "| preln-smoke-s0 | pretrain | preempted | requeued, pending" not in capsys.readouterr().out:
        assert time.time() < deadline, "the requeued job was never shown as preempted and pending"
        main(["sweep", "--status", str(runs)])  # checkpointed and requeued: Slurm starts it again in ~2 minutes
        time.sleep(1)
    deadline = time.time() + 300
    from cramming_simple.sweep.status import queued

    while queued([j["slurm_id"] for j in record["jobs"]]):
        assert time.time() < deadline, "the sweep did not finish within 5 minutes"
        time.sleep(2)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["slurm"]["restarts"] >= 1 and summary["slurm"]["job_id"] == pretrain_id
    assert abs(summary["elapsed_s"] - 20) < 2  # the budget's clock survived the requeue: not 20 s twice
    assert slurm_job_state(pretrain_id) == "COMPLETED"
    capsys.readouterr()
    assert main([*args, "--status"]) == 0
    shown = capsys.readouterr().out
    assert f"preempted {summary['slurm']['restarts']} time(s)" in shown and "| done |" in shown


@pytest.mark.slow  # 2-3 min: Slurm starts a requeued job again after about two minutes
@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_a_job_sigkilled_before_its_first_interval_checkpoint_is_requeued_and_finishes(smoke_cache, glue_tsv, tmp_path):
    """SIGKILL of the training process (an OOM kill, a node's watchdog): no handler runs, the job fails. Its only
    checkpoint is the one of step 0, and `scontrol requeue` (what an admin or a requeue-on-failure policy does)
    resumes from it under the sweep's --resume-or-restart, with no human in between, and finishes the budget."""
    runs = tmp_path / "runs"
    later = (f"hours={20 / 3600}", "impl.checkpoint_minutes=30")  # no interval checkpoint within the budget
    args = sweep_args(runs, smoke_cache, glue_tsv, "--launcher", "slurm", blocks="preln", later=later)
    assert main(args) == 0
    record = json.loads(next((runs / ".sweep").glob("*.json")).read_text())
    pretrain_id = next(j["slurm_id"] for j in record["jobs"] if j["kind"] == "pretrain")
    run = runs / "preln-smoke-s0"
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / ".lock").read_text().split():
        assert time.time() < deadline, "pretraining did not start within 2 minutes"
        time.sleep(0.2)
    time.sleep(2)  # some steps that the kill loses
    assert not (run / "checkpoint.prev.pt").exists()  # the checkpoint of step 0 is the only one
    os.kill(int((run / ".lock").read_text().split()[0]), signal.SIGKILL)
    deadline = time.time() + 60
    while slurm_job_state(pretrain_id) != "FAILED":
        assert time.time() < deadline, slurm_job_state(pretrain_id)
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", pretrain_id], check=True)
    from cramming_simple.sweep.status import queued

    deadline = time.time() + 360
    while queued([j["slurm_id"] for j in record["jobs"]]):
        assert time.time() < deadline, "the requeued pretraining did not finish within 6 minutes"
        time.sleep(2)
    assert slurm_job_state(pretrain_id) == "COMPLETED"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["stop_reason"] == "budget" and summary["slurm"]["restarts"] >= 1
    steps = [json.loads(line)["microbatch_steps"] for line in (run / "metrics.jsonl").open() if '"loss"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == summary["microbatch_steps"]  # the lost rows were dropped


@pytest.mark.slow  # 1 min: one run as two torchrun "nodes" (two Slurm tasks on one machine), its GLUE as an array
@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_a_run_on_two_nodes_is_one_torchrun_per_slurm_task_and_its_glue_one_array(smoke_cache, glue_tsv, tmp_path):
    runs = tmp_path / "runs"
    options = ("--slurm", "cpus_per_task=1", "--slurm", "pretrain.tasks_per_node=2", "--slurm", "array_parallelism=1")
    args = sweep_args(runs, smoke_cache, glue_tsv, "--launcher", "slurm", "--wait", *options, blocks="sasp")
    args[args.index("rte")] = "rte,mrpc"
    assert main(args) == 0
    summary = json.loads((runs / "sasp-smoke-s0" / "summary.json").read_text())
    assert summary["completed"] and summary["world_size"] == 2  # one process per "node", two nodes
    record = json.loads(next((runs / ".sweep").glob("*.json")).read_text())
    pretrain = next(j for j in record["jobs"] if j["kind"] == "pretrain")
    assert slurm_job_state(pretrain["slurm_id"]) == "COMPLETED"
    logs = Path(pretrain["log"]).parent
    agents = [p.read_text() for p in sorted(logs.glob("*_log.err"))]
    assert len(agents) == 2  # submitit's two tasks, each a torchrun agent
    assert all("--nnodes=2" in a and "--rdzv-backend=c10d" in a for a in agents), agents
    glue = [j["slurm_id"] for j in record["jobs"] if j["kind"] == "glue"]
    assert len({i.split("_")[0] for i in glue}) == 1 and sorted(i.split("_")[1] for i in glue) == ["0", "1"]
    assert {slurm_job_state(i) for i in glue} == {"COMPLETED"}  # the run's GLUE tasks: one array of two


@pytest.mark.slow  # 4-8 min: a pretraining job longer than its Slurm time limit, requeued at each limit
@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_a_job_at_its_time_limit_checkpoints_is_requeued_and_finishes_the_budget(smoke_cache, glue_tsv, tmp_path):
    runs = tmp_path / "runs"
    # 40 s of training; the job may run 1 min and hears SIGUSR2 30 s before (Slurm checks its limits once a
    # minute, and a requeued job starts again after about 2.5 minutes here)
    later = (f"hours={40 / 3600}",)
    limits = ("--slurm", "pretrain.time=1", "--slurm", "pretrain.signal_delay_s=30", "--slurm", "cpus_per_task=1")
    args = sweep_args(
        runs, smoke_cache, glue_tsv, "--launcher", "slurm", "--wait", *limits, blocks="preln", later=later
    )
    assert main(args) == 0
    summary = json.loads((runs / "preln-smoke-s0" / "summary.json").read_text())
    assert summary["completed"] and summary["slurm"]["restarts"] >= 1
    assert abs(summary["elapsed_s"] - 40) < 2  # the budget's clock went on across the requeues
    assert len(summary["hardware"]) == 1  # requeued onto the same node: one segment
    record = json.loads(next((runs / ".sweep").glob("*.json")).read_text())
    pretrain = next(j for j in record["jobs"] if j["kind"] == "pretrain")
    assert slurm_job_state(pretrain["slurm_id"]) == "COMPLETED"
    log = Path(pretrain["log"]).read_text()
    assert "Caught signal SIGUSR2" in log and "timed-out" in log  # submitit's time-limit path, not a preemption


@pytest.mark.slow  # 1 min: a sweep whose GLUE job fails (no GLUE data where it was told to look)
@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_wait_exits_1_with_one_line_per_failed_job_and_the_report_still_runs(smoke_cache, tmp_path, capsys, caplog):
    runs, nowhere = tmp_path / "runs", tmp_path / "no-glue-here"
    nowhere.mkdir()
    extra = ("--launcher", "slurm", "--wait", "--slurm", "cpus_per_task=1")
    assert main(sweep_args(runs, smoke_cache, nowhere, *extra, blocks="preln")) == 1
    failures = [r.message for r in caplog.records if r.levelname == "ERROR"]
    assert (
        len(failures) == 1 and failures[0].startswith("preln-smoke-s0/rte: failed (") and "no-glue-here" in failures[0]
    )
    assert (runs / "report" / "index.md").exists()  # the report waits for every job, failed or not
    capsys.readouterr()
    assert main(["sweep", "--status", str(runs)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| preln-smoke-s0/rte |"))
    assert "| failed |" in row and "no-glue-here" in row and row.rstrip(" |").endswith("_log.err")
