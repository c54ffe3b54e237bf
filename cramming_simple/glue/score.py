"""GLUE scoring shared by the GLUE stage and the reports: the nine columns and their average (docs/recipe.md).

Per-seed results live in `RUN_DIR/glue/<task>/seed<k>.json` (written by the GLUE stage):
  {"task", "seed", "protocol", "protocol_hash", "status": "ok"|"failed", "reason",
   "metrics": {split: {metric: value in [0, 1] (pearson/spearman/matthews in [-1, 1])}}, "epochs": [...], ...}
`summarize` turns them into `RUN_DIR/glue/summary.json`; scores there are in percent.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..errors import CorruptFileError
from ..profiles import profile_of
from ..runs import GLUE, RESULTS
from ..runtime import read_json
from .tasks import COLUMNS, TASKS

log = logging.getLogger(__name__)


def mean_std(values: Iterable[float]) -> dict:
    """Mean and sample standard deviation (ddof=1) over seeds. With one seed the std is undefined: None,
    never 0.0 (which would read as a perfectly stable result)."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def format_mean_std(stats: dict, sep: str = "+-") -> str:
    """'61.2 +- 0.4'; '61.2 +- -' for one seed; '-' without any."""
    if stats.get("mean") is None:
        return "-"
    std = "-" if stats.get("std") is None else f"{stats['std']:.1f}"
    return f"{stats['mean']:.1f} {sep} {std}"


def glue_average(scores: dict[str, float]) -> float | None:
    """Mean of the nine column scores (percent); None unless all nine are present and finite."""
    values = [scores.get(c.label) for c in COLUMNS]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return float(np.mean(values))


def load_results(run_dir: str | Path, unreadable: list[CorruptFileError] | None = None, glue: str = GLUE) -> list[dict]:
    """Every `glue/<task>/seed<k>.json` of a run (`glue@0.50/...` for a snapshot's), sorted by task then seed.

    A damaged file is left out: appended to `unreadable` when given, else reported as a warning on stderr.
    """
    results = []
    for f in sorted(Path(run_dir, glue).glob(RESULTS)):
        try:
            result = read_json(f)
            if not isinstance(result, dict) or not {"task", "seed"} <= set(result):
                raise CorruptFileError(f, "not a GLUE result (no task and seed)")
        except CorruptFileError as err:
            if unreadable is None:
                log.warning(f"{err}; left out")
            else:
                unreadable.append(err)
            continue
        results.append(result)
    return sorted(results, key=lambda r: (r["task"], r["seed"]))


def run_summary(
    run_dir: str | Path,
    glue: str = GLUE,
    unreadable: list[CorruptFileError] | None = None,
    tasks: Iterable[str] = (),
    seeds: Iterable[int] = (),
    results: list[dict] | None = None,
    unreadable_pairs: Iterable[tuple[str, int]] = (),
) -> dict:
    """A run's GLUE summary (the content of `glue/summary.json`) from every per-seed result on disk: what the
    report, the model card and the glue command all show. `tasks` / `seeds`: expected besides those on disk (a
    pair that has no result then counts as missing). `results`: the run's results, when already read;
    `unreadable_pairs`: (task, seed) whose files are damaged, reported as such rather than as missing."""
    results = load_results(run_dir, unreadable, glue) if results is None else results
    present = {r["task"] for r in results} | set(tasks)
    ordered = [t for t in TASKS if t in present] + sorted(present - set(TASKS))
    return summarize(results, ordered, {r["seed"] for r in results} | set(seeds), unreadable_pairs)


def column_scores(result: dict) -> dict[str, float]:
    """The columns one task/seed result contributes, in percent."""
    out = {}
    for c in COLUMNS:
        if c.task == result["task"] and result.get("status") == "ok":
            value = result.get("metrics", {}).get(c.split, {}).get(c.metric)
            if value is not None:
                out[c.label] = 100.0 * float(value)
    return out


def summarize(
    results: list[dict],
    tasks: Iterable[str] = TASKS,
    seeds: Iterable[int] | None = None,
    unreadable_pairs: Iterable[tuple[str, int]] = (),
) -> dict:
    """The content of `glue/summary.json` from per-seed results.

    The GLUE average is computed per seed and then reduced to mean +- std over seeds. It is missing (None,
    with the reason) whenever any expected task/seed failed or did not run: never taken over fewer tasks. A pair
    whose file is unreadable counts as not run for the average, and is left out of `missing` (its reader reports
    it as unreadable).
    """
    tasks = list(tasks)
    seeds = sorted(set(seeds) if seeds is not None else {r["seed"] for r in results})
    by_key = {(r["task"], r["seed"]): r for r in results}
    failed = [
        {"task": r["task"], "seed": r["seed"], "reason": r.get("reason")} for r in results if r.get("status") != "ok"
    ]
    not_there = [{"task": t, "seed": s} for t in tasks for s in seeds if (t, s) not in by_key]
    unreadable_pairs = set(unreadable_pairs)
    missing = [m for m in not_there if (m["task"], m["seed"]) not in unreadable_pairs]

    per_seed: dict[int, dict[str, float]] = {s: {} for s in seeds}
    for (_, seed), r in by_key.items():
        if seed in per_seed:
            per_seed[seed].update(column_scores(r))
    columns = {}
    for c in COLUMNS:
        values = {s: per_seed[s][c.label] for s in seeds if c.label in per_seed[s]}
        columns[c.label] = {**mean_std(values.values()), "values": {str(s): v for s, v in values.items()}}

    averages = {s: glue_average(per_seed[s]) for s in seeds}
    reason = None
    if not seeds:
        reason = "no GLUE results"
    elif failed:
        reason = "failed: " + ", ".join(f"{f['task']} seed {f['seed']}" for f in failed)
    elif not_there or set(tasks) != set(TASKS):
        not_run = sorted({m["task"] for m in not_there} | (set(TASKS) - set(tasks)))
        reason = "not run: " + ", ".join(not_run)
    elif any(a is None for a in averages.values()):
        reason = "incomplete metrics"
    average = None
    if reason is None:
        average = {**mean_std(averages.values()), "per_seed": {str(s): a for s, a in averages.items()}}

    protocols = sorted({(r.get("protocol"), r.get("protocol_hash")) for r in results}, key=str)
    profiles = sorted({profile_of("glue", r.get("config") or {}) for r in results})
    return {
        "protocol": protocols[0][0] if len(protocols) == 1 else [p[0] for p in protocols],
        "protocol_hash": protocols[0][1] if len(protocols) == 1 else [p[1] for p in protocols],
        "profile": profiles[0] if len(profiles) == 1 else profiles,  # clean | published | mixed (...)
        "tasks": tasks,
        "seeds": seeds,
        "columns": columns,
        "glue_average": average,
        "average_missing_reason": reason,
        "failed": failed,
        "missing": missing,
    }


def results_table(summary: dict, tasks: list[str]) -> str:
    """The requested tasks' GLUE columns (mean +- std over seeds, percent) and the GLUE average."""
    rows = []
    for c in COLUMNS:
        if c.task in tasks:
            col = summary["columns"][c.label]
            score = format_mean_std(col)
            rows.append({"column": c.label, "metric": c.metric, "score": score, "seeds": col["n"]})
    average = summary["glue_average"]
    tail = (
        f"GLUE average: {format_mean_std(average)} ({average['n']} seeds)"
        if average
        else f"GLUE average: missing ({summary['average_missing_reason']})"
    )
    return f"{pd.DataFrame(rows).to_string(index=False)}\n{tail}"
