"""cramming_simple/sweep/job.py: a job's command, its time limit and requeue, and torchrun per task."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from cramming_simple.runs import GLUE, glue_result
from cramming_simple.runtime import write_json
from cramming_simple.sweep.job import Job


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
