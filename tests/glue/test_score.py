"""cramming_simple/glue/score.py: the nine columns, the average and its seed statistics (docs/recipe.md)."""

from __future__ import annotations

import math

import pytest

from cramming_simple.glue.score import glue_average, summarize
from cramming_simple.glue.tasks import COLUMNS

PRELN_TABLE_2 = {
    "MNLI-m": 81.2,
    "MNLI-mm": 81.6,
    "SST-2": 89.9,
    "STS-B": 87.6,
    "RTE": 56.3,
    "QNLI": 88.9,
    "QQP": 87.1,
    "MRPC": 88.3,
    "CoLA": 49.4,
}


def test_paper_preln_row_averages_to_78_9():
    assert round(glue_average(PRELN_TABLE_2), 1) == 78.9
    assert [c.label for c in COLUMNS] == list(PRELN_TABLE_2)


def test_average_is_missing_when_a_column_is():
    scores = dict(PRELN_TABLE_2)
    del scores["CoLA"]
    assert glue_average(scores) is None
    assert glue_average({**PRELN_TABLE_2, "RTE": float("nan")}) is None


def fake_results(seeds, shift=0.0, fail=None):
    """Per-seed result records as the GLUE stage writes them, with scores = Table 2 + seed-dependent shift."""
    out = []
    for s in seeds:
        metrics = {}
        for c in COLUMNS:
            value = (PRELN_TABLE_2[c.label] + shift * s) / 100
            metrics.setdefault(c.task, {}).setdefault(c.split, {})[c.metric] = value
        for task, m in metrics.items():
            status = "failed" if fail == (task, s) else "ok"
            out.append(
                {
                    "task": task,
                    "seed": s,
                    "protocol": "paper",
                    "protocol_hash": "h",
                    "status": status,
                    "reason": "nan" if status != "ok" else None,
                    "metrics": m,
                }
            )
    return out


def test_summary_means_stds_and_average_over_seeds():
    summary = summarize(fake_results([1, 2, 3], shift=1.0))
    # every column is Table 2 + s for seeds 1..3: mean +2, sample std 1
    for c in COLUMNS:
        assert math.isclose(summary["columns"][c.label]["mean"], PRELN_TABLE_2[c.label] + 2, rel_tol=1e-9)
        assert math.isclose(summary["columns"][c.label]["std"], 1.0, rel_tol=1e-9)
    avg = summary["glue_average"]
    assert math.isclose(avg["mean"], glue_average(PRELN_TABLE_2) + 2, rel_tol=1e-9)
    assert math.isclose(avg["std"], 1.0, rel_tol=1e-9) and avg["n"] == 3
    assert summary["failed"] == [] and summary["missing"] == [] and summary["protocol"] == "paper"


def test_a_failed_task_makes_the_average_missing_not_smaller():
    summary = summarize(fake_results([1, 2, 3], fail=("cola", 2)))
    assert summary["glue_average"] is None
    assert "cola seed 2" in summary["average_missing_reason"]
    assert summary["failed"] == [{"task": "cola", "seed": 2, "reason": "nan"}]
    assert summary["columns"]["CoLA"]["n"] == 2  # the other seeds still count for the column itself


@pytest.mark.parametrize("drop", ["rte", "mnli"])
def test_a_task_not_run_makes_the_average_missing(drop):
    results = [r for r in fake_results([1]) if r["task"] != drop]
    summary = summarize(results)
    assert summary["glue_average"] is None and drop in summary["average_missing_reason"]
    assert {"task": drop, "seed": 1} in summary["missing"]


def test_one_seed_has_no_std():
    from cramming_simple.glue.score import format_mean_std, mean_std, results_table

    assert mean_std([81.5]) == {"mean": 81.5, "std": None, "n": 1}
    summary = summarize(fake_results([1]))
    assert all(summary["columns"][c.label]["std"] is None for c in COLUMNS)
    assert summary["glue_average"]["std"] is None and summary["glue_average"]["n"] == 1
    assert format_mean_std(summary["glue_average"]) == "78.9 +- -"
    table = results_table(summary, [c.task for c in COLUMNS])
    assert "+- 0.0" not in table and "81.2 +- -" in table
