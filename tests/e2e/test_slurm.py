"""End to end on the local Slurm that `.ci/local-slurm` starts: sweeps as real Slurm jobs, requeues, duplicates,
accounting. Skipped, saying why, where no Slurm node takes jobs."""

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
from cramming_simple.runtime import write_json
from cramming_simple.sweep.plan import SweepConfig
from cramming_simple.sweep.status import queued


@pytest.fixture(scope="module")
def glue_tsv(pretrained_run, tmp_path_factory):
    words = sentiment_words(load_tokenizer(pretrained_run / "model"))
    return write_tsv(make_glue({"default": 24}, n_eval=16, words=words), tmp_path_factory.mktemp("cluster-glue"))


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


NO_SLURM = slurm_missing()


@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_a_slurm_sweep_runs_every_job_as_a_slurm_job(smoke_cache, glue_tsv, tmp_path, capsys):
    runs = tmp_path / "runs"
    options = ("--slurm", "cpus_per_task=1", "--slurm", "time=10", "--slurm", "glue.time=5")
    options += ("--slurm", "setup=echo cs-setup-ran on $(hostname)", "--slurm", "report.exclusive=true")
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


@pytest.mark.slow  # 1 min: a sweep whose GLUE job fails (its GLUE files are there, but hold no GLUE data)
@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_wait_exits_1_with_one_line_per_failed_job_and_the_report_still_runs(smoke_cache, tmp_path, capsys, caplog):
    runs, nowhere = tmp_path / "runs", tmp_path / "no-glue-here"
    (nowhere / "RTE").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):  # present, so the sweep's check before submitting passes; unreadable
        (nowhere / "RTE" / name).write_text("not a GLUE file\n")  # as RTE, so the GLUE job fails
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
