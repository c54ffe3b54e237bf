"""cramming_simple/train/distributed.py: beyond one process: torchrun (gloo on CPU) pretraining, the agreed deadline,
and fault drills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import alive, children, pretrain_args
from safetensors.torch import load_file

from cramming_simple.model import MaskedLM, arch_config
from cramming_simple.train.checkpoint import load_checkpoint

SCRIPTS = Path(__file__).parents[1] / "scripts"


ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, **kwargs) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def check(cmd: list[str], timeout: float = 240) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_two_gloo_processes_take_the_same_step_as_one_process_with_the_global_batch(smoke_cache, tmp_path):
    # p stays ~0 under a huge budget, so both runs use lr(0) and one microbatch per rank for the one step.
    # With eps = 1e-12, Adam's first update is lr * sign(g): float noise in near-zero gradients (summed in
    # another order across ranks) would flip whole steps. A larger eps makes the update continuous in g.
    # fp32: this compares data parallelism, not bf16 rounding (auto is bf16 on CPUs that have it).
    common = ["hours=1000", "train.max_steps=1", "impl.log_seconds=1000", "train.eps=1e-4", "impl.precision=fp32"]
    check(
        torchrun("-m", "cramming_simple", *pretrain_args(smoke_cache, tmp_path / "two", *common, "train.microbatch=4"))
    )
    check(
        [
            sys.executable,
            "-m",
            "cramming_simple",
            *pretrain_args(smoke_cache, tmp_path / "one", *common, "train.microbatch=8"),
        ]
    )
    two = load_file(str(tmp_path / "two" / "preln-smoke" / "model" / "model.safetensors"))
    one = load_file(str(tmp_path / "one" / "preln-smoke" / "model" / "model.safetensors"))
    summaries = [json.loads((tmp_path / d / "preln-smoke" / "summary.json").read_text()) for d in ("two", "one")]
    assert [s["world_size"] for s in summaries] == [2, 1] and all(s["optimizer_steps"] == 1 for s in summaries)
    for name, w in one.items():
        assert torch.allclose(two[name], w, atol=1e-6, rtol=1e-5), name
    # the held-out loss, each rank scoring a share of the slice, is the one process's: at init and at the end
    evals = [
        [
            json.loads(line)["eval_loss"]
            for line in (tmp_path / d / "preln-smoke" / "metrics.jsonl").open()
            if '"eval"' in line
        ]
        for d in ("two", "one")
    ]
    assert len(evals[0]) == len(evals[1]) == 2 and evals[0] == pytest.approx(evals[1], rel=1e-5)
    assert summaries[0]["eval_loss"] == evals[0][-1] and summaries[1]["eval_loss"] == evals[1][-1]
    torch.manual_seed(0)  # the runs' init (train.seed 0): the step must have moved the weights away from it
    fresh = MaskedLM(arch_config("tiny"), "preln").state_dict()  # the saved names: encoder.*
    assert sum(not torch.allclose(fresh[n], one[n]) for n in one) > len(one) // 2


@pytest.mark.slow  # 22 s; the rule itself: test_the_stop_vote_agrees_on_time_and_step_time, in a second
def test_a_slowed_rank_stops_at_the_same_microbatch_step(smoke_cache, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = pretrain_args(smoke_cache, tmp_path / "runs", "hours=0.0025", "impl.log_seconds=0.5")
    check(torchrun(str(SCRIPTS / "slow_rank.py"), str(out), "0.05", "--", *args))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["microbatch_steps"] == ranks[1]["microbatch_steps"] > 0
    assert ranks[0]["optimizer_steps"] == ranks[1]["optimizer_steps"]
    assert all(r["stop_reason"] == "budget" and r["world_size"] == 2 for r in ranks)


@pytest.mark.slow  # 31 s in CI; covered by train/test_loop.py's SIGKILL resume and the two-process equality above
def test_a_killed_distributed_run_resumes_from_its_checkpoint(smoke_cache, tmp_path):
    runs = tmp_path / "runs"
    args = pretrain_args(
        smoke_cache, runs, "hours=0.003", "impl.checkpoint_minutes=0.05", "impl.log_seconds=0.5", block="sas"
    )
    run = runs / "sas-smoke"
    proc = subprocess.Popen(
        torchrun("-m", "cramming_simple", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while not (run / "checkpoint.prev.pt").exists():  # an interval checkpoint after the one of step 0
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    workers = children(proc.pid)  # torchrun starts each rank in a session of its own: killpg would miss them
    assert len(workers) >= 2
    for pid in [proc.pid, *workers]:  # the launcher and both ranks, at once
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
    out = check(torchrun("-m", "cramming_simple", *args, "--resume"))
    assert "resuming" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["world_size"] == 2
    assert summary["microbatch_steps"] > saved["state"]["microbatch_steps"]
    assert summary["elapsed_s"] <= 0.003 * 3600 * 1.05 + 0.5


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_usable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "slow_checkpoint.py"), str(path)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout.readline().strip() == "writing"  # B is half written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    torn = list(path.parent.glob(".checkpoint.pt.*.tmp"))  # a name of its own: no other writer can rename it
    assert len(torn) == 1 and torn[0].read_bytes().startswith(b"partial")
    state = load_checkpoint(path)
    assert state["which"] == "A" and torch.equal(state["weights"], torch.arange(10.0))


@pytest.mark.slow  # 40 s; a killed distributed run resumes: test_a_killed_distributed_run_resumes_from_its_checkpoint
def test_ranks_whose_launcher_is_killed_checkpoint_and_exit(smoke_cache, tmp_path):
    """SIGKILL of torchrun alone: its ranks (in sessions of their own) would train on, holding the GPUs and the
    run folder. They get SIGTERM instead, write a checkpoint together and exit; the run then resumes."""
    runs = tmp_path / "runs"
    args = pretrain_args(smoke_cache, runs, "hours=0.003", "impl.log_seconds=0.5", block="preln")
    run = runs / "preln-smoke"
    proc = subprocess.Popen(
        torchrun("-m", "cramming_simple", *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
    )
    deadline = time.monotonic() + 180
    while not (run / "metrics.jsonl").exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while any(alive(p) for p in workers):
        assert time.monotonic() < deadline, "ranks outlived their launcher"
        time.sleep(0.1)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "preempted" and not summary["completed"]
    saved = load_checkpoint(run / "checkpoint.pt")
    assert saved["state"]["microbatch_steps"] == summary["microbatch_steps"] > 0
    check(torchrun("-m", "cramming_simple", *args, "--resume"))
    assert json.loads((run / "summary.json").read_text())["completed"]


def _vote_on_rank(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from cramming_simple.train.distributed import Dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        votes = Dist(rank=rank, world=2, group=dist.group.WORLD).vote(10.0 + rank, [0.5, 0.2][rank], rank == 1, False)
        Path(out, f"rank{rank}.json").write_text(json.dumps(votes))
    finally:
        dist.destroy_process_group()


def test_the_stop_vote_agrees_on_time_and_step_time(tmp_path):
    """Each rank measures its own step time; the budget rule (elapsed + step time >= budget) must use the same
    value on every rank, or one rank stops a step early and waits in the final eval while the other trains on."""
    import torch.multiprocessing as mp

    mp.spawn(_vote_on_rank, args=(f"file://{tmp_path / 'store'}", str(tmp_path)), nprocs=2, join=True)
    votes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert votes[0] == votes[1] == [11.0, 0.5, [True, False]]
