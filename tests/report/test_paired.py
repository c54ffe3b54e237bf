"""cramming_simple/report/paired.py: the paired bootstrap and its replicates."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.runs import OFFSET, report

from cramming_simple.glue.metrics import compute
from cramming_simple.glue.tasks import COLUMNS
from cramming_simple.report.paired import paired_table


def test_paired_bootstrap_matches_a_seeded_hand_loop(two_blocks_with_predictions):
    root, runs, truth = two_blocks_with_predictions
    from cramming_simple.report.load import load_runs, replicates

    loaded = load_runs([runs["preln"], runs["sas"]])
    groups, _ = replicates(loaded.runs, loaded.glue)
    table = paired_table(groups, {n: runs[n.split("-")[0]] for n in ("preln-24h", "sas-24h")}, replicates=200)
    row = table.data.iloc[0]
    assert row.run == "sas-24h - preln-24h"
    diffs_per_column = []
    for k, c in enumerate(COLUMNS):  # by hand: one seeded stream per column, metric per seed, mean over seeds
        y = truth[c.label]
        sets = {}
        for block, run in runs.items():
            sets[block] = []
            for seed in OFFSET:
                with np.load(run / "glue" / c.task / f"seed{seed}.predictions.npz") as z:
                    sets[block].append(z[f"{c.split}.prediction"])
        index = np.random.default_rng([0, k]).integers(0, len(y), size=(200, len(y)))
        diffs = []
        for i in index:
            mine = np.mean([compute([c.metric], p[i], y[i])[c.metric] for p in sets["sas"]])
            theirs = np.mean([compute([c.metric], p[i], y[i])[c.metric] for p in sets["preln"]])
            diffs.append(100 * (mine - theirs))
        point = 100 * (
            np.mean([compute([c.metric], p, y)[c.metric] for p in sets["sas"]])
            - np.mean([compute([c.metric], p, y)[c.metric] for p in sets["preln"]])
        )
        low, high = np.percentile(diffs, [2.5, 97.5])
        assert (row[c.label], row[f"{c.label} low"], row[f"{c.label} high"]) == pytest.approx((point, low, high))
        diffs_per_column.append(diffs)
    avg = np.mean(diffs_per_column, axis=0)
    assert (row["GLUE low"], row["GLUE high"]) == pytest.approx(tuple(np.percentile(avg, [2.5, 97.5])))


def test_bootstrap_replicates_are_an_option_and_too_few_is_an_error(two_blocks_with_predictions, tmp_path):
    root, _, _ = two_blocks_with_predictions
    code, _, err = report(["--runs-dir", str(root), "--out", str(tmp_path / "out"), "--bootstrap", "300"])
    assert code == 0, err
    assert "300 paired bootstrap replicates" in (tmp_path / "out" / "index.md").read_text()
    code, _, err = report(["--runs-dir", str(root), "--out", str(tmp_path / "few"), "--bootstrap", "5"])
    assert code == 2 and "at least 100 replicates" in err
