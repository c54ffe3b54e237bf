"""cramming_simple/glue/runner.py: the worker processes: a dying worker costs only its pair, workers die with their
parent, a pair that another process trains is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import alive, children, hold_lock
from helpers.glue_data import (
    FAST,
    copy_run,
    results,
    run_glue,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_task_seed_that_another_process_trains_is_refused(pretrained_run, glue_dir, tmp_path, capsys):
    run = copy_run(pretrained_run, tmp_path)
    lock = run / "glue/.locks/rte-seed1.lock"
    holder = hold_lock(lock, "cramming-simple glue")
    try:
        assert run_glue(run, glue_dir, "--tasks", "rte,mrpc", *FAST) == 2
        err = capsys.readouterr().err
        assert f"GLUE rte seed 1 of {run} is in use by PID {holder.pid}" in err and "Traceback" not in err
        assert not list(run.glob("glue/*/seed*.json"))
        assert run_glue(run, glue_dir, "--tasks", "mrpc", *FAST) == 0  # another task of the same run may go on
    finally:
        holder.kill()
        holder.wait()
    assert run_glue(run, glue_dir, "--tasks", "rte", *FAST) == 0  # free once its holder is gone


@pytest.mark.slow  # 20 s of workers at work; --gpus 2 itself: test_gpus_2_on_cpu_writes_the_same_results
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc (Linux)")
def test_glue_workers_die_with_their_parent(pretrained_run, glue_dir, tmp_path):
    run = copy_run(pretrained_run, tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # enough work that the workers cannot simply finish the queue within the 10 s below
    args = [
        "glue",
        str(run),
        "--data-dir",
        str(glue_dir),
        "--protocol",
        "smoke",
        "--tasks",
        "all",
        "--gpus",
        "2",
        "--seeds",
        "1,2,3",
        "epochs=40",
    ]
    parent = subprocess.Popen(
        [sys.executable, "-m", "cramming_simple", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    logs = [run / "glue/logs/worker0.log", run / "glue/logs/worker1.log"]
    deadline = time.monotonic() + 120
    while not all(log.exists() and log.stat().st_size > 0 for log in logs):  # both workers are at work
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    workers = children(parent.pid)
    assert len(workers) >= 2
    parent.kill()
    parent.wait()
    killed_at = time.monotonic()
    while any(alive(p) for p in workers) and time.monotonic() - killed_at < 10:
        time.sleep(0.1)
    assert not [p for p in workers if alive(p)], "GLUE workers outlived their parent"
    done = len(list(run.glob("glue/*/seed*.json")))
    assert done < 3 * 8  # the queue was not simply worked off
    time.sleep(2)
    assert len(list(run.glob("glue/*/seed*.json"))) == done  # nobody is taking pairs any more


def test_per_epoch_metrics_go_to_the_tracker(pretrained_run, glue_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is the tested tracker (pip install 'cramming-simple[dev]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = copy_run(pretrained_run, tmp_path)
    assert run_glue(run, glue_dir, "--tasks", "rte", "--seeds", "1", *FAST, "impl.tracker=tensorboard") == 0
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("glue/rte/seed1/validation/accuracy")}
    epochs = results(run)[("rte", 1)]["epochs"]
    assert logged == pytest.approx({e["epoch"]: e["metrics"]["validation"]["accuracy"] for e in epochs}, rel=1e-6)
    assert "glue/rte/seed1/train_loss" in events.Tags()["scalars"]


def _worker_that_dies_on_its_pair(k: int, results) -> None:
    results.put((k, "start", "rte", 1, None))
    os._exit(1)  # as a segfault or an OOM kill would


def _worker_that_finishes_its_pair(k: int, results) -> None:
    results.put((k, "start", "mrpc", 1, None))
    results.put((k, "result", "mrpc", 1, {"task": "mrpc", "seed": 1}))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks two real worker processes")
def test_a_worker_that_dies_costs_its_own_pair_and_the_others_go_on(tmp_path):
    import multiprocessing as mp

    from cramming_simple.glue.runner import collect

    ctx = mp.get_context("fork")
    results = ctx.Queue()
    targets = (_worker_that_dies_on_its_pair, _worker_that_finishes_its_pair)
    processes = [ctx.Process(target=target, args=(k, results)) for k, target in enumerate(targets)]
    for process in processes:
        process.start()
    done = []
    errors = collect([("rte", 1), ("mrpc", 1)], processes, results, done.append, tmp_path)
    for process in processes:
        process.join()
    assert done == [{"task": "mrpc", "seed": 1}]
    assert errors == [f"rte seed 1: not run, its worker died (see {tmp_path})"]
