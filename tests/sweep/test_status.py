"""cramming_simple/sweep/status.py: `sweep --status`, every state with its reason and log."""

from __future__ import annotations

import json
import os

from cramming_simple.cli import main
from cramming_simple.runs import GLUE, glue_result


def test_sweep_status_shows_every_state_with_its_reason_and_log(tmp_path, capsys):
    """Done (and preempted twice), failed with the log's one-line error, skipped behind a failure, running,
    pending, missing: from the run folders and the records that `run_local` writes, with RUNS_DIR alone."""
    import fcntl
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
