"""cramming_simple/runs.py: a result file is named in one place."""

from __future__ import annotations

from pathlib import Path

from cramming_simple.runs import glue_predictions, glue_result


def test_a_result_file_is_named_in_one_place(tmp_path):
    assert glue_result(Path("r/glue"), "rte", 2) == Path("r/glue/rte/seed2.json")
    assert glue_predictions(Path("r/glue/rte/seed2.json")) == Path("r/glue/rte/seed2.predictions.npz")
