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
from .plan import SweepConfig
from .status import SWEEPS, queued, status

log = logging.getLogger(__name__)

KINDS = ("pretrain", "glue", "report")  # `--slurm glue.KEY=VALUE`: an option for one kind of job only
SLURM_DEFAULTS = {
    "timeout_min": 60 * 24 * 2,  # 2 days
    "slurm_signal_delay_s": 120,  # SIGUSR2 two minutes before the time limit: checkpoint and requeue
}
MAX_TIMEOUTS = 30  # requeues after a time limit before submitit gives up: a 24 h budget in 4 h pieces needs 6
INTEGERS = ("gpus_per_node", "cpus_per_task", "nodes", "tasks_per_node", "mem_gb")
SUBMITIT = ("array_parallelism", "signal_delay_s")  # submitit's own slurm_* options (integers)


def launch(cfg: SweepConfig, jobs: list[Job], launcher: str, slurm: dict, wait: bool) -> int:
    """Run or submit `jobs`; with `wait` (always, locally) the exit code says whether every job succeeded."""
    if launcher not in ("local", "slurm"):
        raise ConfigError(f"--launcher must be local or slurm, got {launcher!r}")
    record = {"submitted_at": now_iso(), "launcher": launcher, "sweep": cfg.describe()}
    record.update(host=platform.node(), pid=os.getpid())
    path = cfg.runs_dir / SWEEPS / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    if launcher == "local":
        return run_local(jobs, path, record)
    check_slurm_options(slurm)
    submitted: dict[str, tuple[str, str]] = {}
    try:
        submit(jobs, slurm, submitted)
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


def submit(jobs: list[Job], slurm: dict, submitted: dict[str, tuple[str, str]]) -> None:
    """Submit through submitit: a pretraining job per run, a job array per run's GLUE tasks (array_parallelism
    at a time), each waiting for its run (afterok); the report waits for every job (afterany), so it shows what
    failed too. `kill-on-invalid-dep`: a job whose run failed is cancelled, not left pending forever.
    Fills `submitted`: {job name: (Slurm id, its stderr file)}."""
    import submitit

    for _, group in groupby(jobs, key=lambda j: (j.kind, j.logs, tuple(j.after))):
        group = list(group)
        first = group[0]
        executor = submitit.AutoExecutor(
            folder=first.logs / "%j",
            cluster="slurm",
            slurm_max_num_timeout=int(slurm.get("max_num_timeout", MAX_TIMEOUTS)),
        )
        after = sorted({submitted[name][0].split("_")[0] for name in first.after if name in submitted})
        kind = "afterany" if first.kind == "report" else "afterok"
        extra = {"dependency": f"{kind}:{':'.join(after)}", "kill-on-invalid-dep": "yes"} if after else {}
        executor.update_parameters(
            name=f"cs-{first.name.split('/')[0]}-{first.kind}",
            **{**SLURM_DEFAULTS, **slurm_parameters(slurm, first.kind)},
            slurm_additional_parameters=extra,
        )
        try:
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


def check_slurm_options(options: dict) -> None:
    """`--slurm` keys: plain (every job) or prefixed with a kind of job; one torchrun per node with GPUs."""
    for key in options:
        if "." in key and key.split(".", 1)[0] not in KINDS:
            raise ConfigError(f"--slurm {key}: a prefix names a kind of job ({', '.join(KINDS)})")
    pretrain = {k.split(".", 1)[-1]: v for k, v in options.items() if "." not in k or k.startswith("pretrain.")}
    if int(pretrain.get("tasks_per_node", 1)) > 1 and int(pretrain.get("gpus_per_node", 0)) > 0:
        raise ConfigError(
            "--slurm tasks_per_node must be 1 with GPUs: pretraining starts one torchrun per node, which starts "
            "one process per GPU (several nodes: --slurm pretrain.nodes=N)"
        )


def slurm_parameters(options: dict, kind: str) -> dict:
    """`--slurm key=value` options for one kind of job, as submitit's AutoExecutor takes them. `kind.key=value`
    wins over `key=value`; the report asks for no GPU unless `report.gpus_per_node` says so."""
    chosen = {k: v for k, v in options.items() if "." not in k and k != "max_num_timeout"}
    if kind == "report":
        chosen.pop("gpus_per_node", None)
    chosen.update({k.split(".", 1)[1]: v for k, v in options.items() if k.startswith(f"{kind}.")})
    out = {}
    for key, value in chosen.items():
        if key in ("timeout_min", "time"):
            out["timeout_min"] = int(value)
        elif key in INTEGERS:
            out[key] = int(value)
        elif key in SUBMITIT:
            out[f"slurm_{key}"] = int(value)
        else:
            out[f"slurm_{key}"] = value
    return out


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
