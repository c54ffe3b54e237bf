"""cramming_simple/sweep/plan.py: what a sweep plans, under the names `make all` gives."""

from __future__ import annotations

import shutil

import pytest

from cramming_simple.glue.config import load_protocol, protocol_hash
from cramming_simple.runs import GLUE, MODEL, glue_result, model_hash
from cramming_simple.runtime import write_json
from cramming_simple.sweep.plan import SweepConfig, plan, run_name


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
