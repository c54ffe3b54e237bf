"""Running a sweep's plan: `local` (here, one job at a time, in dependency order) or `slurm` (submitit, as job
arrays: sweep.submit), after asking Slurm which of the plan's jobs an earlier launch left queued.

Every launch is recorded in RUNS_DIR/.sweep/<time>.json (the sweep's arguments, its jobs, their Slurm ids and
log files; locally, each job's outcome as it ends), which `sweep --status RUNS_DIR` reads (sweep.status).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from pathlib import Path

from ..config import ConfigError
from ..runtime import now_iso, write_json
from .job import Job
from .options import SlurmOptions
from .plan import REPORT, SweepConfig
from .status import SWEEPS, queued, status, still_queued
from .submit import submit

log = logging.getLogger(__name__)


def launch(cfg: SweepConfig, jobs: list[Job], launcher: str, slurm: SlurmOptions, wait: bool) -> int:
    """Run or submit `jobs`; with `wait` (always, locally) the exit code says whether every job succeeded."""
    if launcher not in ("local", "slurm"):
        raise ConfigError(f"--launcher must be local or slurm, got {launcher!r}")
    record = {"submitted_at": now_iso(), "launcher": launcher, "sweep": cfg.describe()}
    record.update(host=platform.node(), pid=os.getpid())
    path = cfg.runs_dir / SWEEPS / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    if launcher == "local":
        return run_local(jobs, path, record)
    queued_now = still_queued(cfg.runs_dir, [j.name for j in jobs])
    todo = [j for j in jobs if j.name not in queued_now]
    todo = keep_or_replace_report(todo, queued_now)
    say_what_is_added(todo, queued_now)
    submitted: dict[str, tuple[str, str]] = {}
    try:
        lane = cfg.lane if cfg.max_parallel else None
        submit(todo, slurm, submitted, cfg.hours, queued_now, cfg.runs_dir, singleton=cfg.scheduler_locks, lane=lane)
    finally:  # a submission that fails half-way still records what it submitted
        rows = [
            describe(j, *queued_now[j.name], "already queued")
            if j.name in queued_now
            else describe(j, *submitted.get(j.name, (None, None, "not submitted")))
            for j in jobs
        ]
        write_json(path, {**record, "jobs": rows})
    return wait_for(cfg, [i for i, _ in {**queued_now, **submitted}.values()]) if wait else 0


def keep_or_replace_report(todo: list[Job], queued_now: dict[str, tuple]) -> list[Job]:
    """An earlier report still pending waits on the earlier jobs only: with new jobs to add it is cancelled and
    a new one waits on all of them; with none, it stays and no second report is added."""
    if REPORT not in queued_now:
        return todo
    if all(j.kind == "report" for j in todo):
        return [j for j in todo if j.kind != "report"]
    old = queued_now.pop(REPORT)[0]
    subprocess.run(["scancel", old], check=False)
    log.info(f"cancelled the pending report {old}: a new one waits on the jobs added now as well")
    return todo


def say_what_is_added(todo: list[Job], queued_now: dict[str, tuple]) -> None:
    """Before anything is submitted: how many jobs this adds (a GLUE element counts as one of MaxSubmitJobs)."""
    added = [j.name for j in todo if j.kind != "report"]
    left = f"; {len(queued_now)} already queued or running, left alone" if queued_now else ""
    log.info(
        f"adding {len(todo)} Slurm job(s) ({', '.join(added) or 'nothing to redo'}"
        f"{'; the report last' if len(added) < len(todo) else ''}){left}"
    )


def run_local(jobs: list[Job], path: Path | None = None, record: dict | None = None) -> int:
    """One job after another, here, each logging to a file in its run folder as well; a job whose dependency
    failed is skipped (and counted as failed). The record says how each job ended, as it ends."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = [describe(j, None, j.logs / f"{stamp}-{j.name.replace('/', '-')}.log", "pending") for j in jobs]
    failed: list[str] = []
    for job, row in zip(jobs, rows, strict=True):
        blocked = sorted(set(job.after) & set(failed))
        if blocked and job.kind != "report":  # the report runs anyway: it shows what is missing
            log.error(f"{job.name}: not run, it depends on {', '.join(blocked)}")
            failed.append(job.name)
            row.update(outcome="skipped", reason=f"depends on {', '.join(blocked)}", log=None)
            continue
        row["outcome"] = "running"
        if path:
            write_json(path, {**(record or {}), "jobs": rows})
        try:
            job(Path(row["log"]) if path else None)
            row["outcome"] = "ok"
        except RuntimeError as err:
            log.error(str(err))
            failed.append(job.name)
            row.update(outcome="failed", reason=str(err).split(": ", 1)[-1])
    if path:
        write_json(path, {**(record or {}), "jobs": rows, "ended_at": now_iso()})
    return 1 if failed else 0


def describe(job: Job, slurm_id: str | None, log_file: str | Path | None, outcome: str | None = None) -> dict:
    """A job as its launch record keeps it. `outcome`: a local job's state as it goes (pending, running, ok,
    failed, skipped); "not submitted" for a Slurm job a failed submission never reached."""
    row = {"name": job.name, "kind": job.kind, "argv": job.argv, "logs": str(job.logs), "slurm_id": slurm_id}
    return {**row, "log": str(log_file) if log_file else None, "outcome": outcome}


def wait_for(cfg: SweepConfig, slurm_ids: list[str]) -> int:
    """Until no job of the sweep is pending or running; then one line per job that did not succeed."""
    while queued(slurm_ids):
        time.sleep(5)
    failures = [f"{r['name']}: {r['state']} ({r['detail']})" for r in status(cfg) if r["state"] != "done"]
    for line in failures:
        log.error(line)
    return 1 if failures else 0
