"""Run folders and the published numbers -> pandas frames for the tables and plots.

GLUE numbers are recomputed from the per-seed files (`glue/<task>/seed<k>.json`) with `glue.score`, never read
from a glue/summary.json that may predate the last fine-tuning job.

Runs that differ only in `train.seed` (same block, budget, data, hardware, recipe, GLUE protocol) are
replicates: `replicates()` folds them into one row whose GLUE values pool pretraining x fine-tuning seeds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from .. import runs as contract
from ..config import ConfigError, config_hash, load_yaml
from ..data.packing import data_mismatch
from ..errors import CorruptFileError
from ..glue.score import load_results, mean_std, run_summary
from ..glue.tasks import COLUMNS, TASK_LABELS, TASKS
from ..model import BLOCKS
from ..profiles import ADDED_LATER as PROFILE_ADDED_LATER
from ..profiles import profile_of
from ..runtime import read_json
from .stats import throughput

# Config keys that do not make two runs different experiments: how they ran, not what they trained.
NOT_AN_EXPERIMENT = {
    "name": None,
    "train": ("seed",),
    "impl": (
        "checkpoint_minutes",
        "log_seconds",
        "eval_minutes",
        "keep_at",
        "prefetch",
        "threads",
        "tracker",
        "calibration_target",
        "calibration_seconds",
        "lock",
    ),
    "data": ("cache_dir", "verify"),
    # a reference budget is its reference; each run's calibration of it is how it ran (a sweep's runs share one)
    "reference": ("local_device", "local_rate", "rate_low", "rate_high", "local_hours", "date", "calibration"),
}

# Config keys added by later versions, with the value that reproduces what ran before them: a run that records
# one at that value is the same experiment as an older run that does not record it.
ADDED_LATER = PROFILE_ADDED_LATER["pretrain"]


@dataclass
class Runs:
    runs: pd.DataFrame  # one row per run (index: run name), in BLOCKS order, then in the order given
    metrics: pd.DataFrame  # every metrics.jsonl row, with a `run` column
    glue: pd.DataFrame  # one row per (run, column label): mean, std, n in percent, values {seed: score}
    problems: pd.DataFrame  # one row per (run, task, seed) that failed, was not run or is unreadable: status, reason
    warnings: list[str] = field(default_factory=list)  # damaged files that were left out, each named
    diagnostics: dict[str, list[dict]] = field(default_factory=dict)  # run -> its diagnostics.jsonl rows
    budget_glue: pd.DataFrame = field(default_factory=pd.DataFrame)  # run, fraction, GLUE mean, std, n


def load_runs(run_dirs: list[Path]) -> Runs:
    """Every run's facts, metrics and GLUE results. A damaged summary.json, config.yaml or seed file is left
    out with a warning naming it (its run stays a row, marked); it never stops the other runs' report."""
    rows, metrics, glue, problems, warnings, budget_glue, diagnostics = [], [], [], [], [], [], {}
    for run_dir in map(Path, run_dirs):
        if not (run_dir / contract.SUMMARY).exists() and not (run_dir / contract.CONFIG).exists():
            raise ConfigError(f"{run_dir} is not a run folder (no {contract.SUMMARY})")
        row = read_run(run_dir, warnings)
        if row["summary_problem"]:
            warnings.append(f"{row['summary_problem']}: run {row['name']} is shown without its pretraining numbers")
        if row["name"] in {r["name"] for r in rows}:
            raise ConfigError(f"two run folders are both named '{row['name']}': compare runs with distinct names")
        unreadable: list[CorruptFileError] = []
        results = load_results(run_dir, unreadable)
        damaged = {contract.task_seed(err.path): err for err in unreadable}  # reported as unreadable, not not run
        # every task expected: one not run shows
        glue_summary = run_summary(run_dir, tasks=TASKS, results=results, unreadable_pairs=damaged)
        for err in unreadable:
            warnings.append(f"{err}: left out of run {row['name']}'s GLUE scores")
        row.update(glue_fields(glue_summary))
        row["glue_models"] = tuple(sorted({r["model_hash"] for r in results if r.get("model_hash")}))

        m = read_metrics(run_dir / contract.METRICS)
        metrics.append(m.assign(run=row["name"]))
        rates = throughput(train_rows(m)["tokens_per_s"] if "tokens_per_s" in m else [])
        row.update(rate_median=rates["median"], rate_cv=rates["cv"], rate_windows=rates["windows"])
        rows.append(row)
        diagnostics[row["name"]] = [r for r in read_jsonl(run_dir / contract.DIAGNOSTICS) if "layers" in r]
        budget_glue += snapshot_glue(run_dir, row["name"], glue_summary)
        glue += glue_columns(row["name"], glue_summary)
        problems += glue_problems(row["name"], glue_summary, damaged)

    check_same_data(rows)
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
        diagnostics=diagnostics,
        budget_glue=pd.DataFrame(budget_glue, columns=["run", "fraction", "mean", "std", "n"]),
    )


def glue_columns(name: str, glue_summary: dict) -> list[dict]:
    """One row per GLUE column of a run: its mean, std, count and values over seeds."""
    rows = []
    for c in COLUMNS:
        stats = glue_summary["columns"][c.label]
        rows.append({"run": name, "column": c.label, "task": c.task, **{k: stats[k] for k in GLUE_STATS}})
    return rows


GLUE_STATS = ("mean", "std", "n", "values")


def glue_problems(name: str, glue_summary: dict, damaged: dict) -> list[dict]:
    """What is missing from a run's GLUE scores, and why: failed, not run, or an unreadable seed file."""
    problems = [{"run": name, **f, "status": "failed"} for f in glue_summary["failed"]]
    problems += [{"run": name, **x, "status": "not run", "reason": None} for x in glue_summary["missing"]]
    problems += [
        {"run": name, "task": t, "seed": s, "status": "unreadable", "reason": f"{err.path.name}: {err.reason}"}
        for (t, s), err in damaged.items()
    ]
    return problems


def snapshot_glue(run_dir: Path, name: str, final: dict) -> list[dict]:
    """GLUE averages of the snapshots a run kept and fine-tuned (glue@0.50/ ...), and of its final model (1.0)."""
    out = []
    for folder in sorted(run_dir.glob(f"{contract.GLUE}@*")):
        try:
            fraction = float(folder.name.split("@", 1)[1])
        except ValueError:
            continue
        avg = run_summary(run_dir, folder.name, unreadable=[], tasks=TASKS)["glue_average"]
        if avg:
            out.append({"run": name, "fraction": fraction, "mean": avg["mean"], "std": avg["std"], "n": avg["n"]})
    if out and final["glue_average"]:
        avg = final["glue_average"]
        out.append({"run": name, "fraction": 1.0, "mean": avg["mean"], "std": avg["std"], "n": avg["n"]})
    return out


def train_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The training log windows of metrics.jsonl (eval rows carry "kind": "eval")."""
    if "kind" not in metrics:
        return metrics
    return metrics[metrics["kind"].fillna("train") == "train"]


def experiment_key(cfg: dict, summary: dict) -> str:
    """What must match for two runs to be replicates: the config without its seed and how-it-ran keys, plus the
    hardware it ran on."""
    kept = {}
    for section, value in cfg.items():
        drop = NOT_AN_EXPERIMENT.get(section, ())
        if drop is None or (section in ADDED_LATER and ADDED_LATER[section] == value):
            continue  # not a fact of the experiment, or a key added later at the value that ran before it
        if isinstance(value, dict):  # a key added by a later version, at the value that ran before it: left out
            drop = (
                *drop,
                *(
                    k
                    for k, v in value.items()
                    if f"{section}.{k}" in ADDED_LATER and ADDED_LATER[f"{section}.{k}"] == v
                ),
            )
        kept[section] = {k: v for k, v in value.items() if k not in drop} if isinstance(value, dict) else value
    facts = {k: summary.get(k) for k in ("block", "device", "world_size", "precision")}
    return config_hash({"config": kept, **facts})


def check_same_data(rows: list[dict]) -> None:
    """Runs that claim the same prepared data (one key) must have read the same ids: a run resumed elsewhere by an
    older version could have trained on a second preparation with another tokenizer. Refused in one line."""
    seen: dict[str, dict] = {}
    for row in rows:
        data = row["data"]
        if not data.get("hash"):
            continue
        first = seen.setdefault(data["hash"], row)
        reason = data_mismatch(first["data"], data)
        if reason:
            raise ConfigError(
                f"runs {first['name']} and {row['name']} both name prepared data {data['hash']} but did not read the "
                f"same ids: {reason}. Report them separately"
            )


def read_run(run_dir: Path, warnings: list[str] | None = None) -> dict:
    """One run's summary.json, with config.yaml filling what the summary lacks (all of it when it is damaged). The
    folder's name is the run's name (a copy keeps the name of its original in its files). Missing pieces are one
    line each in `warnings`."""
    warnings = [] if warnings is None else warnings
    problem = ""  # why summary.json could not be read ("" when it could)
    try:
        # no summary yet: a run before its first checkpoint (find_runs lists it while a process trains it)
        s = read_json(run_dir / contract.SUMMARY) if (run_dir / contract.SUMMARY).exists() else {}
        if not isinstance(s, dict):
            raise CorruptFileError(run_dir / contract.SUMMARY, "not a run summary (not a JSON object)")
    except CorruptFileError as err:
        s, problem = {}, str(err)
    config_path = run_dir / contract.CONFIG
    try:
        cfg = OmegaConf.to_container(load_yaml(config_path)) if config_path.exists() else {}
    except ConfigError as err:
        cfg = {}
        warnings.append(f"{err}: run {run_dir.name} is compared without its config")
    if not config_path.exists():
        warnings.append(f"run {run_dir.name} has no {contract.CONFIG}: it is not folded with replicates")
    data = s.get("data") or cfg.get("data") or {}
    block = s.get("block") or cfg.get("block")
    state = contract.run_state(run_dir, s)
    return {
        "name": run_dir.name,
        "dir": str(run_dir),
        "block": block,
        "title": s.get("block_title") or (BLOCKS[block].title if block in BLOCKS else str(block)),
        "block_source": s.get("block_source") or cfg.get("block_source"),  # a user's block: file/module, sha256
        "params": s.get("params"),
        "microbatch": s.get("microbatch"),
        "microbatch_steps": s.get("microbatch_steps"),
        "tokens": s.get("tokens"),
        "elapsed_s": s.get("elapsed_s"),
        "final_loss": s.get("final_loss"),
        "eval_loss": s.get("eval_loss"),  # held-out MLM loss (runs before held-out evaluation: none)
        "arch": s.get("arch"),
        "train_seed": (cfg.get("train") or {}).get("seed", 0) if cfg else None,  # unset: the default seed, 0
        "experiment": experiment_key(cfg, s) if cfg and not problem else f"run:{run_dir}",
        "budget": s.get("budget") or cfg.get("budget"),
        **budget_fields(s, cfg),
        "device": s.get("device"),
        "node": ((s.get("slurm") or {}).get("node") or s.get("host")),  # where it last trained (older: unknown)
        "slurm_job": (s.get("slurm") or {}).get("job_id"),
        "hardware": s.get("hardware") or [],  # [{device, node, from_step}] (older summaries: none)
        "world_size": s.get("world_size", 1),
        "precision": s.get("precision"),
        "profile": profile_of("pretrain", cfg) if cfg else None,  # clean | published | mixed (...)
        "data_source": data.get("source"),
        "data_name": data.get("name"),
        "data_hash": data.get("hash"),
        "data": data,
        "completed": bool(s.get("completed", False)),
        "stop_reason": s.get("stop_reason") if s.get("completed") else state,  # running, preempted, ..., killed
        "summary_problem": problem,
    }


def budget_fields(s: dict, cfg: dict) -> dict:
    """A run's budget (in hours of a reference device, for a reference budget), its rate and where a cap stopped it."""
    reference = s.get("reference") or cfg.get("reference")  # hardware.py: its device, rate and calibration
    hours = s.get("budget_hours") or cfg.get("hours")
    local_hours = (reference or {}).get("local_hours") or hours  # the hours here
    # microbatch steps per second of training: Table 1's speed (a summary without elapsed_s: over the budget, which a
    # completed run fills)
    steps, seconds = s.get("microbatch_steps"), s.get("elapsed_s") or (local_hours * 3600 if local_hours else None)
    return {
        "budget_hours": hours,
        "reference": reference,
        "reference_name": (reference or {}).get("name"),
        "local_hours": local_hours,
        "step_rate": steps / seconds if steps is not None and seconds else None,
        "capped_at_p": s.get("capped_at_p"),  # where train.max_microbatches / max_steps stopped it (None: not)
    }


def glue_fields(summary: dict) -> dict:
    """The run-level GLUE facts: average over seeds (or why it is missing) and the protocol used."""
    avg = summary["glue_average"] or {}

    def as_text(value):  # several protocols mixed in one run: "paper + smoke"
        return " + ".join(map(str, value)) if isinstance(value, list) else value

    def as_tuple(value):  # the protocol hashes of the run's results, one or several
        return tuple(value) if isinstance(value, list) else (value,)

    return {
        "glue_values": list((avg.get("per_seed") or {}).values()),  # per fine-tuning seed: the Welch sample
        "glue_mean": avg.get("mean"),
        "glue_std": avg.get("std"),
        "glue_n": avg.get("n", 0),
        "glue_missing": summary["average_missing_reason"],
        "glue_seeds": tuple(summary["seeds"]),
        "glue_protocol": as_text(summary["protocol"]) if summary["seeds"] else None,
        "glue_protocol_hash": as_tuple(summary["protocol_hash"]) if summary["seeds"] else None,
        "glue_profile": as_text(summary["profile"]) if summary["seeds"] else None,
    }


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a row cut short by a crash, or by a run still writing
            if isinstance(row, dict):
                rows.append(row)
    return rows


def read_metrics(path: Path) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(path))


def replicates(
    runs: pd.DataFrame, glue: pd.DataFrame, warnings: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs folded by experiment (replicates differ only in train.seed): one row per experiment, in the runs'
    order, and its GLUE columns pooled over pretraining x fine-tuning seeds.

    A group of one is its run unchanged (named as the run). A larger group is named by its runs, joined; its
    numbers are means over the runs (steps, losses, rates), `*_values` hold the per-run values and `members`
    the run names. Its GLUE average is missing when any run's is.
    """
    groups, pooled = [], []
    for _, members in runs.groupby("experiment", sort=False):
        members = distinct_seeds(members, [] if warnings is None else warnings)
        first = members.iloc[0]
        names = list(members.name)
        row = first.to_dict()
        row |= {
            "name": " + ".join(names),
            "members": names,
            "replicates": len(members),
            "train_seeds": tuple(int(s) for s in members.train_seed if s is not None and not pd.isna(s)),
            "steps_values": [v for v in members.microbatch_steps if not pd.isna(v)],
            "rate_step_values": [v for v in members.step_rate if v is not None and not pd.isna(v)],
            "rate_values": [v for v in members.rate_median if v is not None and not pd.isna(v)],
            "loss_values": [  # the MLM loss Table 1 shows: held-out where recorded, else training
                e if e is not None and not pd.isna(e) else f for e, f in zip(members.eval_loss, members.final_loss)
            ],
            "glue_values": [v for vs in members.glue_values for v in vs],
        }
        if len(members) > 1:
            row |= folded(members, row["glue_values"])
        groups.append(row)
        for c in COLUMNS:
            cells = glue[(glue.run.isin(names)) & (glue.column == c.label)]
            values = [v for vs in cells["values"] for v in vs.values()]
            pooled.append(
                {
                    "run": row["name"],
                    "column": c.label,
                    "task": c.task,
                    **mean_std(values),
                    "values": values,
                }
            )
    frame = pd.DataFrame(groups).set_index("name", drop=False)
    return frame, pd.DataFrame(pooled)


def folded(members: pd.DataFrame, values: list[float]) -> dict:
    """A group's numbers over its runs: means of steps, losses and rates, GLUE over every seed of every run."""
    first, missing = members.iloc[0], members[members.glue_mean.isna()]
    return {
        "label": f"{first.title} ({len(members)} pretraining seeds)",
        "completed": bool(members.completed.all()),
        "summary_problem": next((p for p in members.summary_problem if p), ""),
        "stop_reason": next((r for r in members.stop_reason if r not in (None, *contract.COMPLETE)), None),
        "microbatch_steps": members.microbatch_steps.mean(),
        "step_rate": pd.to_numeric(members.step_rate).mean(),
        "capped_at_p": pd.to_numeric(members.capped_at_p).max() if members.capped_at_p.notna().any() else None,
        "final_loss": members.final_loss.mean(),
        "eval_loss": pd.to_numeric(members.eval_loss).mean(),
        "rate_median": pd.to_numeric(members.rate_median).mean(),
        "rate_cv": pd.to_numeric(members.rate_cv).max(),
        "glue_mean": None if not missing.empty else float(np.mean(values)),
        "glue_std": None if not missing.empty or len(values) < 2 else float(np.std(values, ddof=1)),
        "glue_n": 0 if not missing.empty else len(values),
        "glue_missing": None if missing.empty else f"{missing.iloc[0]['name']}: {missing.iloc[0].glue_missing}",
        "glue_seeds": tuple(s for seeds in members.glue_seeds for s in seeds) if missing.empty else (),
    }


def distinct_seeds(members: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    """Replicates are runs of different pretraining seeds: of runs with one seed (a renamed copy, or two names
    given one train.seed) the first is kept and the others are named in one warning, never counted twice."""
    seeds = members.train_seed.map(lambda v: None if v is None or pd.isna(v) else int(v))
    twice = seeds.duplicated(keep="first") & seeds.notna()
    for seed in sorted(set(seeds[twice])):
        names = list(members.name[seeds == seed])
        warnings.append(
            f"runs {', '.join(names)} have the same pretraining seed (train.seed={seed}): they are not replicates "
            f"(a copy, or one seed given twice), so only {names[0]} is counted"
        )
    return members[~twice]


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
