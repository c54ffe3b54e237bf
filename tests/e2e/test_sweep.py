"""End to end: a local sweep pretrains, fine-tunes and reports, and a rerun does nothing."""

from __future__ import annotations

import json

import pytest
from helpers.slurm import sweep_args

from cramming_simple.cli import main
from cramming_simple.runs import GLUE, glue_result


@pytest.mark.slow  # 45 s: e2e/test_slurm.py runs the same plan on Slurm in make test
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
