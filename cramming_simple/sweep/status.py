"""Where every job of a sweep stands (`sweep --status RUNS_DIR`): pending, running, preempted N time(s), done,
failed (with its one-line reason and its log), or missing.

The run folders are the truth for what is done (a completed summary, ok GLUE results, the report's index).
The sweep records (RUNS_DIR/.sweep/*.json, written by sweep.launch) say what was launched, where each job
logs and, locally, how it ended; Slurm's queue (`squeue`) says what is pending or running now, and where the
cluster keeps accounting, `sacct` how a job that is neither done nor queued ended: timeout, out_of_memory,
node_fail, preempted, cancelled (else plain failed).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

from ..config import ConfigError
from ..runs import GLUE, LOCK, MODEL, SUMMARY, glue_result, lock_held, model_hash, read_summary, run_state
from ..runtime import read_json
from .plan import REPORT, SweepConfig, completed, glue_ok, plan_rows

SWEEPS = ".sweep"  # RUNS_DIR/.sweep/<time>-<pid>.json: what each launch launched


def records(runs_dir: Path) -> list[dict]:
    """Every launch of a sweep into `runs_dir`, oldest first (unreadable records are skipped)."""
    out = []
    for path in sorted((runs_dir / SWEEPS).glob("*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def last_sweep(runs_dir: Path) -> SweepConfig:
    """The sweep last launched into `runs_dir`, from its record: what `--status RUNS_DIR` shows."""
    described = [r["sweep"] for r in records(runs_dir) if r.get("sweep")]
    if not described:
        raise ConfigError(
            f"no sweep was launched into {runs_dir} (no {SWEEPS}/ records): give the sweep's --blocks, --seeds "
            "and --budget with --status"
        )
    return SweepConfig.from_record(described[-1], runs_dir)


def launched(runs_dir: Path) -> dict[str, list[dict]]:
    """{job name: every launch of it, newest first}, merged from all of RUNS_DIR's records."""
    jobs: dict[str, list[dict]] = {}
    for record in reversed(records(runs_dir)):
        alive = record.get("launcher") != "local" or sweep_alive(record)
        for job in record.get("jobs", []):
            jobs.setdefault(job["name"], []).append({**job, "sweep_alive": alive})
    return jobs


def still_queued(runs_dir: Path, names: list[str]) -> dict[str, tuple[str, str | None]]:
    """{job name: (Slurm id, log)} of the named jobs that an earlier launch into RUNS_DIR left pending or running
    in Slurm (its queue, asked now): a resubmission leaves them alone and makes its new jobs wait on them."""
    launches = launched(runs_dir)
    live = queued([j["slurm_id"] for name in names for j in launches.get(name, []) if j.get("slurm_id")])
    out = {}
    for name in names:
        job = current(launches.get(name, []), live)
        if job.get("slurm_id") in live:
            out[name] = (job["slurm_id"], job.get("log"))
    return out


def current(launches: list[dict], live: dict[str, str]) -> dict:
    """The launch that speaks for a job: one Slurm still has pending or running (a resubmission's duplicate that
    failed must not hide it), else the newest; {} when never launched."""
    return next((j for j in launches if j.get("slurm_id") in live), launches[0] if launches else {})


def sweep_alive(record: dict) -> bool:
    """Whether the local sweep process that wrote a record still runs (on another host: assume it does)."""
    if record.get("ended_at"):
        return False
    if record.get("host", platform.node()) != platform.node() or not record.get("pid"):
        return True
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(cfg: SweepConfig) -> list[dict]:
    """Every planned run, GLUE task and the report with its state, one-line detail and log."""
    launches = launched(cfg.runs_dir)
    live = queued([j["slurm_id"] for js in launches.values() for j in js if j.get("slurm_id")])
    jobs = {name: current(js, live) for name, js in launches.items()}
    ended = accounted([j["slurm_id"] for j in jobs.values() if j.get("slurm_id") and j["slurm_id"] not in live])
    jobs = {name: {**job, "slurm_state": ended.get(job.get("slurm_id"))} for name, job in jobs.items()}
    rows, models = [], {}
    for name, kind, run_dir, task, wanted, seeds in plan_rows(cfg):
        job = jobs.get(name, {})
        if kind == "pretrain":
            state, detail = pretrain_state(run_dir, job, live)
            models[run_dir] = model_hash(run_dir / MODEL)  # once per run: its GLUE tasks' results must be of it
        else:
            state, detail = glue_state(run_dir, task, seeds, (wanted, models.get(run_dir)), job, live)
        rows.append({"name": name, "kind": kind, "state": state, "detail": detail, "logs": log_of(job)})
    job = jobs.get(REPORT, {})
    index = cfg.report_dir / "index.md"
    state, detail = ("done", str(index)) if index.exists() else launched_state(job, live)
    rows.append({"name": REPORT, "kind": "report", "state": state, "detail": detail, "logs": log_of(job)})
    return rows


def pretrain_state(run_dir: Path, job: dict, live: dict[str, str]) -> tuple[str, str]:
    summary = read_summary(run_dir) if (run_dir / SUMMARY).exists() else None
    restarts = ((summary or {}).get("slurm") or {}).get("restarts") or 0
    preempted = f"preempted {restarts} time(s)" if restarts else ""
    if completed(run_dir):
        return "done", ", ".join(filter(None, [f"{summary.get('microbatch_steps')} microbatch steps", preempted]))
    if lock_held(run_dir / LOCK):
        return "running", ", ".join(filter(None, ["training", preempted]))
    stood = run_state(run_dir, summary) if summary else None  # preempted, nonfinite_loss, killed, ...
    if job:
        state, detail = launched_state(job, live, stood)
        if state in ("pending", "running") and stood == "preempted":
            return "preempted", ", ".join(filter(None, [f"requeued, {state}", preempted]))
        return state, ", ".join(filter(None, [detail, preempted]))
    if stood:
        return ("preempted" if stood == "preempted" else "failed"), f"stopped: {stood} (not launched by a sweep)"
    return "missing", "not launched"


def glue_state(run_dir: Path, task: str, seeds: list[int], wanted: tuple, job: dict, live) -> tuple[str, str]:
    """`wanted`: (protocol hash, model hash) of a done result."""
    if all(glue_ok(run_dir, task, s, *wanted) for s in seeds):
        return "done", f"{len(seeds)} seed(s) ok"
    failure = glue_failure(run_dir, task, seeds)
    state, detail = launched_state(job, live, failure)
    if failure and state not in ("pending", "running"):
        return "failed", failure
    return state, detail


def launched_state(job: dict, live: dict[str, str], reason: str | None = None) -> tuple[str, str]:
    """A launched job that is not done: pending or running (Slurm's queue, or a live local sweep), else failed
    with its reason (the job's, its log's last error line, or what its run folder says)."""
    if not job or job.get("outcome") == "not submitted":
        return "missing", "not submitted" if job else "not launched"
    slurm_id = job.get("slurm_id")
    if slurm_id and slurm_id in live:
        return live[slurm_id].lower(), f"Slurm job {slurm_id}"
    if not slurm_id and job.get("outcome") in ("pending", "running") and job.get("sweep_alive"):
        return job["outcome"], "local sweep"
    why = log_reason(job.get("log")) or job.get("reason") or reason or "ended without finishing"
    said = job.get("slurm_state")  # sacct's word, where the cluster keeps accounting
    state = said.lower() if said in SACCT_STATES else "failed"
    return state, why + (f" (Slurm job {slurm_id}{': ' + said if said else ''})" if slurm_id else "")


def log_reason(path: str | None) -> str | None:
    """The last one-line error in a job's log (`cramming-simple X: error: ...`, or the exit code), or None."""
    if not path or not Path(path).exists():
        return None
    lines = Path(path).read_text(errors="replace").splitlines()
    ours = [line for line in lines if line.startswith("cramming-simple ") and ": error: " in line]
    if ours:  # the program's own one line, before Slurm's and submitit's words about the exit
        return ours[-1].split(": error: ", 1)[1].strip()
    for line in reversed(lines):
        if ": error: " in line or "exited with" in line:  # srun's, or the job's exit code
            return line.split(": error: ", 1)[-1].strip()
    return None


def log_of(job: dict) -> str:
    """A job's log file (records before the file was recorded: its log folder); none for a job never started."""
    return job.get("log") or ("" if "log" in job else job.get("logs", ""))


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


SACCT_STATES = {"TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "CANCELLED", "BOOT_FAIL", "DEADLINE"}


def accounted(slurm_ids: list[str]) -> dict[str, str]:
    """{Slurm id: the state it ended in} from Slurm's accounting (`sacct`), or {} where the cluster keeps none
    (sacct fails: "accounting storage is disabled") or there is no Slurm here."""
    if not slurm_ids:
        return {}
    cmd = ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(slurm_ids)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    if done.returncode != 0:
        return {}
    rows = (line.split("|", 1) for line in done.stdout.splitlines() if "|" in line)
    return {job_id: (state.split() or [""])[0] for job_id, state in rows}  # "CANCELLED by 0": CANCELLED


def queued(slurm_ids: list[str]) -> dict[str, str]:
    """{Slurm id: state} of the given jobs (array elements `<id>_<k>` too) that Slurm has pending or running."""
    if not slurm_ids:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(slurm_ids)], capture_output=True, text=True
        ).stdout
    except FileNotFoundError:  # no Slurm here (a local sweep, or --status off the cluster): nothing is queued
        return {}
    return {i: s for i, s in (line.split() for line in out.splitlines() if line.strip())}
