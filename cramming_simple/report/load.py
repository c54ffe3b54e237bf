"""Run folders and the published numbers -> pandas frames for the tables and plots.

GLUE numbers are recomputed from the per-seed files (`glue/<task>/seed<k>.json`) with `glue.score`, never read
from a glue/summary.json that may predate the last fine-tuning job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from .. import runs as contract
from ..config import ConfigError, load_yaml
from ..errors import CorruptFileError
from ..glue.score import load_results, summarize
from ..glue.tasks import COLUMNS, TASK_LABELS
from ..model import BLOCKS
from ..runtime import read_json


@dataclass
class Runs:
    runs: pd.DataFrame  # one row per run (index: run name), in BLOCKS order, then in the order given
    metrics: pd.DataFrame  # every metrics.jsonl row, with a `run` column
    glue: pd.DataFrame  # one row per (run, column label): mean, std, n in percent
    problems: pd.DataFrame  # one row per (run, task, seed) that failed, was not run or is unreadable: status, reason
    warnings: list[str] = field(default_factory=list)  # damaged files that were left out, each named


def load_runs(run_dirs: list[Path]) -> Runs:
    """Every run's facts, metrics and GLUE results. A damaged summary.json, config.yaml or seed file is left
    out with a warning naming it (its run stays a row, marked); it never stops the other runs' report."""
    rows, metrics, glue, problems, warnings = [], [], [], [], []
    for run_dir in map(Path, run_dirs):
        if not (run_dir / contract.SUMMARY).exists():
            raise ConfigError(f"{run_dir} is not a run folder (no {contract.SUMMARY})")
        row = read_run(run_dir)
        if row["summary_problem"]:
            warnings.append(f"{row['summary_problem']}: run {row['name']} is shown without its pretraining numbers")
        if row["name"] in {r["name"] for r in rows}:
            raise ConfigError(f"two run folders are both named '{row['name']}': compare runs with distinct names")
        unreadable: list[CorruptFileError] = []
        results = load_results(run_dir, unreadable)
        glue_summary = summarize(results)
        damaged = {_task_seed(err.path): err for err in unreadable}
        for err in unreadable:
            warnings.append(f"{err}: left out of run {row['name']}'s GLUE scores")
        glue_summary["missing"] = [m for m in glue_summary["missing"] if (m["task"], m["seed"]) not in damaged]
        row.update(glue_fields(glue_summary))
        row["glue_models"] = " + ".join(sorted({r["model_hash"] for r in results if r.get("model_hash")}))
        rows.append(row)

        m = read_metrics(run_dir / contract.METRICS)
        metrics.append(m.assign(run=row["name"]))
        for c in COLUMNS:
            stats = glue_summary["columns"][c.label]
            glue.append(
                {
                    "run": row["name"],
                    "column": c.label,
                    "task": c.task,
                    "mean": stats["mean"],
                    "std": stats["std"],
                    "n": stats["n"],
                }
            )
        problems += [{"run": row["name"], **f, "status": "failed"} for f in glue_summary["failed"]]
        problems += [{"run": row["name"], **x, "status": "not run", "reason": None} for x in glue_summary["missing"]]
        problems += [
            {
                "run": row["name"],
                "task": t,
                "seed": s,
                "status": "unreadable",
                "reason": f"{err.path.name}: {err.reason}",
            }
            for (t, s), err in damaged.items()
        ]

    runs = pd.DataFrame(rows).set_index("name", drop=False)
    rank = runs.block.map({name: i for i, name in enumerate(BLOCKS)}).fillna(len(BLOCKS))
    runs = runs.iloc[rank.argsort(kind="stable")]  # BLOCKS order; runs of one block keep the order given
    # Legend and table label: the block's title, plus the run name where several runs share a block.
    shared = runs.block.duplicated(keep=False)
    runs["label"] = [f"{t} ({n})" if s else t for t, n, s in zip(runs.title, runs.name, shared)]
    return Runs(
        runs=runs,
        metrics=pd.concat(metrics, ignore_index=True),
        glue=pd.DataFrame(glue),
        problems=pd.DataFrame(problems, columns=["run", "task", "seed", "status", "reason"]),
        warnings=warnings,
    )


def _task_seed(path: Path) -> tuple[str, int | None]:
    """glue/<task>/seed<k>.json -> (task, k)"""
    seed = path.stem.removeprefix("seed")
    return path.parent.name, int(seed) if seed.isdigit() else None


def read_run(run_dir: Path) -> dict:
    """One run's summary.json, with config.yaml filling what the summary lacks (all of it when it is damaged)."""
    problem = ""  # why summary.json could not be read ("" when it could)
    try:
        s = read_json(run_dir / contract.SUMMARY)
        if not isinstance(s, dict):
            raise CorruptFileError(run_dir / contract.SUMMARY, "not a run summary (not a JSON object)")
    except CorruptFileError as err:
        s, problem = {}, str(err)
    config_path = run_dir / contract.CONFIG
    try:
        cfg = OmegaConf.to_container(load_yaml(config_path)) if config_path.exists() else {}
    except ConfigError:
        cfg = {}
    data = s.get("data") or cfg.get("data") or {}
    block = s.get("block") or cfg.get("block")
    return {
        "name": s.get("name") or run_dir.name,
        "dir": str(run_dir),
        "block": block,
        "title": BLOCKS[block].title if block in BLOCKS else str(block),
        "params": s.get("params"),
        "microbatch": s.get("microbatch"),
        "microbatch_steps": s.get("microbatch_steps"),
        "tokens": s.get("tokens"),
        "elapsed_s": s.get("elapsed_s"),
        "final_loss": s.get("final_loss"),
        "budget": s.get("budget") or cfg.get("budget"),
        "budget_hours": s.get("budget_hours") or cfg.get("hours"),
        "device": s.get("device"),
        "world_size": s.get("world_size", 1),
        "precision": s.get("precision"),
        "data_source": data.get("source"),
        "data_name": data.get("name"),
        "data_hash": data.get("hash"),
        "completed": bool(s.get("completed", False)),
        "stop_reason": s.get("stop_reason"),
        "summary_problem": problem,
    }


def glue_fields(summary: dict) -> dict:
    """The run-level GLUE facts: average over seeds (or why it is missing) and the protocol used."""
    avg = summary["glue_average"] or {}

    def as_text(value):  # several protocols mixed in one run: "paper + smoke"
        return " + ".join(map(str, value)) if isinstance(value, list) else value

    return {
        "glue_mean": avg.get("mean"),
        "glue_std": avg.get("std"),
        "glue_n": avg.get("n", 0),
        "glue_missing": summary["average_missing_reason"],
        "glue_seeds": ",".join(map(str, summary["seeds"])),
        "glue_protocol": as_text(summary["protocol"]) if summary["seeds"] else None,
        "glue_protocol_hash": as_text(summary["protocol_hash"]) if summary["seeds"] else None,
    }


def read_metrics(path: Path) -> pd.DataFrame:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a row cut short by a crash, or by a run still writing
    return pd.DataFrame(rows)


def describe_problems(problems: pd.DataFrame) -> str:
    """'CoLA: seeds 1, 2 failed (non-finite loss), seed 3 not run; RTE: ...' for some rows of `problems`."""
    per_task = []
    for task, rows in problems.groupby("task", sort=False):
        parts = []
        for (status, reason), g in rows.fillna({"reason": ""}).groupby(["status", "reason"], sort=False):
            seeds = ", ".join(map(str, g.seed))
            parts.append(f"seed{'s' if len(g) > 1 else ''} {seeds} {status}" + (f" ({reason})" if reason else ""))
        per_task.append(f"{TASK_LABELS.get(task, task)}: {', '.join(parts)}")
    return "; ".join(per_task)
