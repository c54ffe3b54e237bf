"""cramming_simple/report/budgets.py: the report names each budget, marks capped runs, and refuses to mix budgets."""

from __future__ import annotations

import re

import pytest
from helpers.runs import summary

from cramming_simple.cli import main
from cramming_simple.report import tables
from cramming_simple.report.load import load_runs, replicates


def test_a_capped_run_warns_once_records_where_it_stopped_and_table_1_marks_it(sweep_runs):
    runs, jobs, errors = sweep_runs
    for job in jobs:
        s = summary(runs / job.name)
        assert errors[job.name].count("train.max_microbatches=4 will stop this run at about p = ") == 1
        assert (
            "(the calibration's Pre-LN rate" in errors[job.name] and "train.max_microbatches=null" in errors[job.name]
        )
        assert s["stop_reason"] == "max_microbatches" and s["microbatch_steps"] == 4
        assert 0 < s["capped_at_p"] < 0.9 and s["projected_microbatch_steps"] > 4
    loaded = load_runs([runs / j.name for j in jobs])
    groups, _ = replicates(loaded.runs, loaded.glue)
    table = tables.table1(groups, loaded.problems, None)
    rows = table.data.set_index("block")
    preln, sasp = (summary(runs / j.name) for j in jobs)
    # equal steps, so the step ratio would read 1.00: the speed is the training rate's ratio
    rate = (sasp["microbatch_steps"] / sasp["elapsed_s"]) / (preln["microbatch_steps"] / preln["elapsed_s"])
    assert rows.loc["sasp", "speed"] == pytest.approx(rate, rel=1e-6)
    assert rows.loc["sasp", "capped_at_p"] == pytest.approx(sasp["capped_at_p"])
    assert all("(capped)" in cell for cell in table.shown["Run"])
    assert any(n.startswith("sasp-smoke-double-s0 was capped: train.max_microbatches stopped it") for n in table.notes)


def test_the_report_names_each_budget_and_refuses_to_mix_budgets_without_the_flag(
    reference_run, pretrained_run, capsys
):
    out = reference_run.parent.parent / "report"
    mixed = [str(reference_run), str(pretrained_run)]  # 0.0004 h on the `double` reference, and plain hours
    assert main(["report", *mixed, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different budget references" in err[0] and "--mixed-budgets" in err[0]
    assert main(["report", *mixed, "--out", str(out), "--mixed-budgets"]) == 0
    assert "budgets mixed (--mixed-budgets)" in (out / "table1.md").read_text()
    line = next(r for r in (out / "index.md").read_text().splitlines() if "preln-smoke-double" in r)
    here = summary(reference_run)["reference"]["local_hours"]
    assert re.search(rf"0\.0004 h on cpu .* = {here:.3g} h \[[0-9.]+, [0-9.]+\] on cpu .*reference double", line)
