"""Running a sweep's plan: `local` (here, one job at a time, in dependency order) or `slurm` (submitit: one Slurm
job per plan job, each waiting for the jobs it depends on), and what stands where (`status`).

The run folders are the truth: a job's state is read off them (a completed summary, ok GLUE results, the
report's index), and Slurm's job states (`squeue`, `scontrol show job`) only add pending and running. Every
submission is recorded in RUNS_DIR/.sweep/<time>.json (jobs, Slurm ids, log folders), which `status` reads.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

from ..config import ConfigError
from ..runs import GLUE, LOCK, glue_result, lock_held, read_summary, run_state
from ..runtime import now_iso, read_json, write_json
from .plan import REPORT, Job, SweepConfig, completed

log = logging.getLogger(__name__)

SWEEPS = ".sweep"  # RUNS_DIR/.sweep/<time>.json: what each submission submitted
SLURM_DEFAULTS = {"timeout_min": 60 * 24 * 2, "slurm_signal_delay_s": 120}  # 2 days; SIGUSR2 2 min before the end


def launch(cfg: SweepConfig, jobs: list[Job], launcher: str, slurm: dict, wait: bool) -> int:
    """Run or submit `jobs`; with `wait` (always, locally) the exit code says whether every job succeeded."""
    if launcher == "local":
        return run_local(jobs)
    if launcher != "slurm":
        raise ConfigError(f"--launcher must be local or slurm, got {launcher!r}")
    ids = submit(jobs, slurm)
    record = {"submitted_at": now_iso(), "launcher": "slurm", "jobs": [describe(j, ids.get(j.name)) for j in jobs]}
    write_json(cfg.runs_dir / SWEEPS / f"{time.strftime('%Y%m%d-%H%M%S')}.json", record)
    pending = [j.name for j in jobs if j.kind != "report"]
    log.info(f"submitted {len(ids)} job(s) ({', '.join(pending) or 'nothing to redo'}; the report last)")
    return wait_for(cfg, jobs, ids) if wait else 0


def run_local(jobs: list[Job]) -> int:
    """One job after another, here; a job whose dependency failed is skipped (and counted as failed)."""
    failed: list[str] = []
    for job in jobs:
        if set(job.after) & set(failed) and job.kind != "report":
            log.error(f"{job.name}: not run, it depends on {', '.join(sorted(set(job.after) & set(failed)))}")
            failed.append(job.name)
            continue
        log.info(f"[sweep] {job.name}: cramming-simple {' '.join(job.argv)}")
        try:
            job()
        except RuntimeError as err:
            log.error(str(err))
            failed.append(job.name)
    return 1 if failed else 0


def submit(jobs: list[Job], slurm: dict) -> dict[str, str]:
    """One Slurm job per plan job through submitit; the report waits for every job (afterany), the others for
    their dependencies (afterok). Returns {job name: Slurm id}."""
    import submitit

    ids: dict[str, str] = {}
    for job in jobs:
        executor = submitit.AutoExecutor(folder=job.logs / "%j", cluster="slurm")
        kind = "afterany" if job.kind == "report" else "afterok"
        after = [ids[name] for name in job.after if name in ids]
        # a job whose run failed is cancelled, not left pending forever (--wait would never return)
        extra = {"dependency": f"{kind}:{':'.join(after)}", "kill-on-invalid-dep": "yes"} if after else {}
        executor.update_parameters(
            name=f"cs-{job.name}", **SLURM_DEFAULTS, **slurm_parameters(slurm), slurm_additional_parameters=extra
        )
        ids[job.name] = executor.submit(job).job_id
    return ids


def slurm_parameters(options: dict) -> dict:
    """`--slurm key=value` options as submitit's AutoExecutor takes them: slurm_<key> (time in minutes too)."""
    out = {}
    for key, value in options.items():
        if key in ("timeout_min", "time"):
            out["timeout_min"] = int(value)
        elif key in ("gpus_per_node", "cpus_per_task", "nodes", "tasks_per_node", "mem_gb"):
            out[key] = int(value)
        else:
            out[f"slurm_{key}"] = value
    return out


def describe(job: Job, slurm_id: str | None) -> dict:
    return {"name": job.name, "kind": job.kind, "argv": job.argv, "logs": str(job.logs), "slurm_id": slurm_id}


def wait_for(cfg: SweepConfig, jobs: list[Job], ids: dict[str, str]) -> int:
    """Until no job of the sweep is pending or running; then one line per job that did not succeed."""
    while queued(list(ids.values())):
        time.sleep(5)
    failures = [f"{row['name']}: {row['state']} ({row['detail']})" for row in status(cfg) if row["state"] != "done"]
    for line in failures:
        log.error(line)
    return 1 if failures else 0


def queued(slurm_ids: list[str]) -> dict[str, str]:
    """{Slurm id: state} of the given jobs that Slurm still has pending or running."""
    if not slurm_ids:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %T", "-j", ",".join(slurm_ids)], capture_output=True, text=True, check=False
    ).stdout
    return {i: s for i, s in (line.split() for line in out.splitlines() if line.strip())}


def last_submission(runs_dir: Path) -> dict:
    records = sorted((runs_dir / SWEEPS).glob("*.json"))
    return json.loads(records[-1].read_text()) if records else {"jobs": []}


def status(cfg: SweepConfig) -> list[dict]:
    """Every planned run and GLUE task with its state: pending, running, preempted, done, failed or missing."""
    from .plan import glue_ok, plan_rows

    submitted = {j["name"]: j for j in last_submission(cfg.runs_dir)["jobs"]}
    live = queued([j["slurm_id"] for j in submitted.values() if j.get("slurm_id")])
    rows = []
    for name, kind, run_dir, task, wanted, seeds in plan_rows(cfg):
        job = submitted.get(name, {})
        state, detail = slurm_state(job, live)
        if kind == "pretrain":
            summary = read_summary(run_dir) if (run_dir / "summary.json").exists() else None
            restarts = ((summary or {}).get("slurm") or {}).get("restarts") or 0
            requeued = f", preempted {restarts} time(s)" if restarts else ""
            if completed(run_dir):
                state, detail = "done", f"{(summary or {}).get('microbatch_steps')} microbatch steps{requeued}"
            elif state == "missing" or lock_held(run_dir / LOCK):
                stood = run_state(run_dir, summary) if summary or run_dir.exists() else "not started"
                state = "running" if stood == "running" else ("preempted" if stood == "preempted" else state)
                detail = stood + requeued
        elif all(glue_ok(run_dir, task, s, wanted) for s in seeds):
            state, detail = "done", f"{len(seeds)} seed(s) ok"
        elif glue_failure(run_dir, task, seeds):
            state, detail = "failed", glue_failure(run_dir, task, seeds)
        rows.append({"name": name, "kind": kind, "state": state, "detail": detail, "logs": job.get("logs", "")})
    report = cfg.report_dir / "index.md"
    rows.append(
        {
            "name": REPORT,
            "kind": "report",
            "state": "done" if report.exists() else "missing",
            "detail": str(report),
            "logs": "",
        }
    )
    return rows


def glue_failure(run_dir: Path, task: str, seeds: list[int]) -> str | None:
    """The first failed seed of a task, with its one-line reason (from its result file), or None."""
    for seed in seeds:
        path = glue_result(run_dir / GLUE, task, seed)
        try:
            record = read_json(path) if path.exists() else {}
        except Exception:  # noqa: BLE001 - a damaged file is not a failure to report here
            continue
        if record.get("status") == "failed":
            return f"seed {seed}: {record.get('reason')}"
    return None


def slurm_state(job: dict, live: dict[str, str]) -> tuple[str, str]:
    slurm_id = job.get("slurm_id")
    if slurm_id and slurm_id in live:
        return live[slurm_id].lower(), f"Slurm job {slurm_id}"
    if slurm_id:
        return "failed", f"Slurm job {slurm_id} ended; see {job.get('logs')}"
    return "missing", "not submitted"
