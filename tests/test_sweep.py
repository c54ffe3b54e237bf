"""Sweeps of (block x seed): the same plan here (`--launcher local`) and on a real one-node Slurm started by
`.ci/local-slurm` (skipped, with the reason, where there is no Slurm; never a mock)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_glue import make_glue, sentiment_words, write_tsv

from cramming_simple.cli import main
from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.runs import GLUE, glue_result

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["hours=0.0008", "impl.log_seconds=1", "impl.eval_minutes=0", "impl.device=cpu"]  # ~3 s of training


@pytest.fixture(scope="module")
def glue_tsv(pretrained_run, tmp_path_factory):
    words = sentiment_words(load_tokenizer(pretrained_run / "model"))
    return write_tsv(make_glue({"default": 24}, n_eval=16, words=words), tmp_path_factory.mktemp("sweep-glue"))


def sweep_args(runs: Path, cache: Path, glue: Path, *extra: str, blocks="preln,sasp", later=()) -> list[str]:
    """A smoke sweep on generated GLUE data; `later`: overrides after the short budget's (they win)."""
    return [
        "sweep",
        "--blocks",
        blocks,
        "--seeds",
        "0",
        "--budget",
        "smoke",
        "--protocol",
        "smoke",
        "--tasks",
        "rte",
        "--glue",
        "epochs=1",
        "--data-dir",
        str(glue),
        "--runs-dir",
        str(runs),
        *extra,
        *SHORT,
        *later,
        f"data.cache_dir={cache}",
    ]


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
        def __call__(self):
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
    assert jobs[0].argv[:2] == ["pretrain", "--block"] and "--resume" in jobs[0].argv and "train.seed=0" in jobs[0].argv
    with pytest.raises(Exception, match="unknown block"):
        plan(SweepConfig(["prelm"], [0], "smoke", tmp_path))


def slurm_missing() -> str | None:
    """Why no Slurm can take jobs here, or None when one answers (started by `bash .ci/local-slurm`, as CI does;
    the tests never install or start it themselves)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no Slurm here: `bash .ci/local-slurm` (as root) starts a one-node cluster"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install cramming-simple[slurm])"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10).stdout
    except subprocess.TimeoutExpired:
        return "sinfo did not answer: is slurmctld running? (bash .ci/local-slurm)"
    if not any(state.strip().rstrip("*") in ("idle", "mix", "alloc") for state in nodes.splitlines()):
        return f"no Slurm node takes jobs (sinfo: {nodes.strip() or 'nothing'}); bash .ci/local-slurm starts one"
    return None


NO_SLURM = slurm_missing()


@pytest.mark.skipif(NO_SLURM is not None, reason=str(NO_SLURM))
def test_a_slurm_sweep_runs_every_job_as_a_slurm_job(smoke_cache, glue_tsv, tmp_path, capsys):
    runs = tmp_path / "runs"
    args = sweep_args(runs, smoke_cache, glue_tsv, "--launcher", "slurm", "--wait", "--slurm", "cpus_per_task=1")
    started = time.time()
    assert main(args) == 0
    record = json.loads(next((runs / ".sweep").glob("*.json")).read_text())
    ids = [j["slurm_id"] for j in record["jobs"]]
    assert len(ids) == 5 and all(ids)  # 2 pretraining jobs, 2 GLUE jobs, the report
    states = {i: slurm_job_state(i) for i in ids}
    assert set(states.values()) == {"COMPLETED"}, states  # read from Slurm itself
    assert "sasp-smoke-s0" in (runs / "report" / "table1.md").read_text()
    assert all(Path(j["logs"]).is_dir() for j in record["jobs"])  # logs per job, in the run folder
    capsys.readouterr()
    time.sleep(1)  # the next record's name (a time to the second) differs
    assert main(args) == 0  # resubmitting a finished sweep submits nothing
    assert json.loads(sorted((runs / ".sweep").glob("*.json"))[-1].read_text())["jobs"] == []
    from cramming_simple.sweep import SweepConfig, plan

    glue_result(runs / "sasp-smoke-s0" / GLUE, "rte", 1).unlink()  # one pair lost (failed, damaged, deleted)
    cfg = SweepConfig(["preln", "sasp"], [0], "smoke", runs, "smoke", "rte", str(glue_tsv), glue_args=["epochs=1"])
    assert [j.name for j in plan(cfg)] == ["sasp-smoke-s0/rte", "report"]  # a resubmission redoes that one job
    assert time.time() - started < 600


def slurm_job_state(job_id: str) -> str:
    """A job's state from Slurm: `scontrol show job` while it remembers it, else the job-completion log."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    for line in Path("/var/lib/cramming-simple-slurm/jobcomp.txt").read_text().splitlines():
        if line.startswith(f"JobId={job_id} "):
            return next(f.split("=", 1)[1] for f in line.split() if f.startswith("JobState="))
    return "UNKNOWN"


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
    while not (run / "checkpoint.pt").exists():  # mid-pretraining: a first checkpoint is on disk
        assert time.time() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.5)
    time.sleep(2)
    subprocess.run(["scontrol", "requeue", pretrain_id], check=True)  # what a preemption does to the job
    deadline = time.time() + 300
    from cramming_simple.sweep.launch import queued

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
