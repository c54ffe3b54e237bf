"""Running a sweep's plan: `local` (here, one job at a time, in dependency order) or `slurm` (submitit: one Slurm
job per pretraining run, each run's GLUE tasks as one job array waiting for it, the report waiting for all).

Every launch is recorded in RUNS_DIR/.sweep/<time>.json (the sweep's arguments, its jobs, their Slurm ids and
log files; locally, each job's outcome as it ends), which `sweep --status RUNS_DIR` reads (sweep.status).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from itertools import groupby
from pathlib import Path

from ..config import ConfigError
from ..errors import UserError
from ..runtime import now_iso, write_json
from .job import Job
from .options import SlurmOptions
from .plan import SweepConfig
from .status import SWEEPS, queued, status

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
    submitted: dict[str, tuple[str, str]] = {}
    try:
        submit(jobs, slurm, submitted, cfg.hours)
    finally:  # a submission that fails half-way still records what it submitted
        rows = [describe(j, *submitted.get(j.name, (None, None, "not submitted"))) for j in jobs]
        write_json(path, {**record, "jobs": rows})
    pending = [j.name for j in jobs if j.kind != "report"]
    log.info(f"submitted {len(submitted)} job(s) ({', '.join(pending) or 'nothing to redo'}; the report last)")
    return wait_for(cfg, [i for i, _ in submitted.values()]) if wait else 0


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


def submit(jobs: list[Job], slurm: SlurmOptions, submitted: dict[str, tuple[str, str]], hours: float | None) -> None:
    """Submit through submitit: a pretraining job per run, a job array per run's GLUE tasks (array_parallelism
    at a time), each waiting for its run (afterok); the report waits for every job (afterany), so it shows what
    failed too. `kill-on-invalid-dep`: a job whose run failed is cancelled, not left pending forever.
    Submitted without this process's Slurm variables (submitit's clean_env), so that a sweep started inside a job
    does not pass that job's allocation on. Fills `submitted`: {job name: (Slurm id, its stderr file)}."""
    import submitit

    for _, group in groupby(jobs, key=lambda j: (j.kind, j.logs, tuple(j.after))):
        group = list(group)
        first = group[0]
        executor = submitit.AutoExecutor(folder=first.logs / "%j", cluster="slurm", **slurm.executor(first.kind))
        after = sorted({submitted[name][0].split("_")[0] for name in first.after if name in submitted})
        kind = "afterany" if first.kind == "report" else "afterok"
        extra = {"dependency": f"{kind}:{':'.join(after)}", "kill-on-invalid-dep": "yes"} if after else {}
        parameters = slurm.parameters(first.kind, hours)
        parameters["slurm_additional_parameters"] = {**parameters.get("slurm_additional_parameters", {}), **extra}
        executor.update_parameters(name=f"cs-{first.name.split('/')[0]}-{first.kind}", **parameters)
        try:
            with submitit.helpers.clean_env():
                if first.kind == "glue":  # one array: each task an element, as many at once as array_parallelism
                    with executor.batch():
                        handles = [executor.submit(job) for job in group]
                else:
                    handles = [executor.submit(job) for job in group]
        except submitit.core.utils.FailedJobError as err:  # sbatch said no: its own last line says why
            said = [line for line in str(err).splitlines() if line.strip()]
            raise UserError(
                f"Slurm refused {first.name} ({said[-1] if said else err}); {len(submitted)} job(s) before it were "
                "submitted (sweep --status shows them; resubmitting the sweep submits the rest)"
            ) from None
        for job, handle in zip(group, handles, strict=True):
            submitted[job.name] = (handle.job_id, str(handle.paths.stderr))


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
