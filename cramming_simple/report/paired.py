"""Table 3: a paired bootstrap over validation examples, every run against its Pre-LN run, per GLUE column and
for the GLUE average (docs/design.md).

Both sides are scored on the same resampled examples in each replicate, which removes the examples' own
difficulty from the comparison; each side's metric is averaged over its prediction sets (fine-tuning seeds,
and pretraining seeds for replicate groups), read from `glue/<task>/seed<k>.predictions.npz`. The GLUE
average resamples every task independently and averages the nine column differences per replicate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CorruptFileError
from ..glue.runner import read_predictions
from ..glue.score import load_results
from ..glue.tasks import COLUMNS
from ..runs import GLUE, glue_result
from . import stats
from .tables import Notes, Table, fmt, glue_baseline, members_of

REPLICATES = 1000
BOOTSTRAP_NOTE = "95 % interval contains 0: within noise (paired bootstrap over validation examples)"


def prediction_sets(results: dict[Path, list[dict]], task: str, split: str, protocol_hashes: tuple | None) -> list:
    """[(predictions, labels)] of every ok seed result of `task` (of this protocol) in the given run folders'
    results (`glue.score.load_results`, damaged files already left out and warned about). A run of several
    protocols (`protocol_hashes` has more than one) has none: its seeds are not one protocol's sample."""
    out = []
    for run_dir, records in results.items():
        for r in records:
            ours = protocol_hashes == (r.get("protocol_hash"),)
            if r["task"] != task or r.get("status") != "ok" or not ours:
                continue
            try:
                arrays = (read_predictions(glue_result(Path(run_dir, GLUE), task, r["seed"])) or {}).get(split)
            except CorruptFileError:
                continue  # damaged predictions: that seed is left out of the bootstrap
            if arrays is not None:
                out.append((arrays["prediction"], arrays["label"]))
    return out


def compare(
    a: list, b: list, metric: str, rng: np.random.Generator, replicates: int
) -> tuple[float, np.ndarray] | None:
    """(point difference, per-replicate differences) in percent, or None when the two sides were not scored on
    the same examples."""
    labels = a[0][1]
    if any(len(y) != len(labels) or not np.array_equal(y, labels) for _, y in a + b):
        return None
    full = np.arange(len(labels))[None, :]
    index = stats.bootstrap_index(len(labels), replicates, rng)

    def side(sets, idx):
        return stats.side_metric(metric, [p for p, _ in sets], labels, idx)

    point = 100 * float(side(a, full)[0] - side(b, full)[0])
    return point, 100 * (side(a, index) - side(b, index))


def paired_table(runs: pd.DataFrame, run_dirs: dict[str, Path], replicates: int = REPLICATES, seed: int = 0) -> Table:
    notes, data, shown = Notes(), [], []
    results = {name: load_results(run_dir, unreadable=[]) for name, run_dir in run_dirs.items()}  # read once

    def results_of(group: pd.Series) -> dict[Path, list[dict]]:
        return {run_dirs[m]: results[m] for m in members_of(group)}

    for name, r in runs.iterrows():
        base = glue_baseline(r, runs, need_average=False)
        if base is None or base.name == name:
            continue
        row_notes: list[str] = []
        d = {"kind": "vs_preln", "block": r.block, "title": r.title, "run": f"{name} - {base.name}"}
        s = {"Block": r.title, "Run": f"{name} vs {base.name}"}
        per_replicate, points = [], []
        for k, c in enumerate(COLUMNS):
            mine = prediction_sets(results_of(r), c.task, c.split, r.glue_protocol_hash)
            theirs = prediction_sets(results_of(base), c.task, c.split, base.glue_protocol_hash)
            rng = np.random.default_rng([seed, k])  # one stream per column: a column's interval never moves
            result = compare(mine, theirs, c.metric, rng, replicates) if mine and theirs else None
            if result is None:
                why = "no saved predictions" if not (mine and theirs) else "the two runs scored different examples"
                s[c.label] = "-" + notes.mark(f"{name} vs {base.name}, {c.label}: {why}", row_notes)
                d[c.label] = d[f"{c.label} low"] = d[f"{c.label} high"] = None
                continue
            point, diffs = result
            iv = stats.percentile_interval(diffs, point)
            per_replicate.append(diffs)
            points.append(point)
            d[c.label], d[f"{c.label} low"], d[f"{c.label} high"] = iv.diff, iv.low, iv.high
            d[f"{c.label} within_noise"] = iv.within_noise
            s[c.label] = cell(iv, notes, row_notes)
        if len(points) == len(COLUMNS):
            iv = stats.percentile_interval(np.mean(per_replicate, axis=0), float(np.mean(points)))
            d["GLUE"], d["GLUE low"], d["GLUE high"] = iv.diff, iv.low, iv.high
            d["GLUE within_noise"] = iv.within_noise
            s["GLUE"] = cell(iv, notes, row_notes)
        else:
            d["GLUE"] = None
            s["GLUE"] = "-" + notes.mark("the GLUE average needs all nine columns", row_notes)
        data.append({**d, "notes": "; ".join(row_notes)})
        shown.append(s)
    columns = ["Block", "Run", *(c.label for c in COLUMNS), "GLUE"]
    return Table(pd.DataFrame(data), pd.DataFrame(shown, columns=columns), notes, None)


def cell(iv: stats.Interval, notes: Notes, row_notes: list[str]) -> str:
    text = f"{fmt(iv.diff, '+.1f')} [{fmt(iv.low, '+.1f')}, {fmt(iv.high, '+.1f')}]"
    return text + (notes.mark(BOOTSTRAP_NOTE, row_notes) if iv.within_noise else "")
