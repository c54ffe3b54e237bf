"""Submitting a sweep's jobs to Slurm through submitit, as few submissions as the plan allows.

- every pretraining run of this launch: one job array (`array_parallelism` at a time, across the whole sweep);
- for each GLUE task, the runs pretrained in that array: one array whose element i waits for pretraining element
  i (`aftercorr`), so a run's GLUE starts as soon as its own pretraining ends;
- the GLUE tasks of runs pretrained before (done, or still queued from an earlier launch): one array per run,
  waiting on that run's queued job if there is one (`afterok`);
- the report, waiting for all of them (`afterany`), so that it shows what failed too.

A 21-run sweep is 1 + 8 + 1 submissions instead of 2 x 21 + 1 (each array element still counts as a job where the
cluster limits MaxSubmitJobs; the sweep says how many it adds first). With one pretraining run, or with
impl.lock=none (every job a Slurm singleton of its own name, so that no two jobs ever run one folder: an array
shares one name), each run's jobs are submitted on their own: its pretraining, its GLUE tasks as one array waiting
for it (`afterok`). With `--max-parallel N` they are submitted that way too, and every job of run i is named for
lane i % N of the sweep (`cs-<RUNS_DIR name>-<path hash>-lane<k>`) and is a Slurm singleton (its GLUE array also
%1: a singleton does not hold back the elements of its own array): a lane runs one job at a time, in the order
submitted (a run's pretraining before its GLUE), so the whole sweep runs at most N jobs at once, the jobs of an
earlier launch into the same RUNS_DIR included (the report, outside the lanes, waits for them all anyway).
`kill-on-invalid-dep`: a job whose run failed is cancelled, not left pending forever. Array elements of several
runs log to RUNS_DIR/.sweep/logs/<array>_<k>/, linked from each run's logs/ folder as <run>/logs/<array>_<k>.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from itertools import groupby
from pathlib import Path

from ..errors import UserError
from .job import Job
from .options import SlurmOptions
from .status import SWEEPS

ARRAY_LOGS = "logs"  # RUNS_DIR/.sweep/logs/<array>_<k>/: the elements of the sweep's arrays


def groups(jobs: list[Job], arrays: bool) -> list[tuple[list[Job], str | None]]:
    """The submissions, in order: (jobs, what they wait on: "pretrain" for the pretraining array element by
    element, else None: their own `after`)."""
    pretrain = [j for j in jobs if j.kind == "pretrain"]
    if not arrays:
        return [(list(g), None) for _, g in groupby(jobs, key=lambda j: (j.kind, j.logs, tuple(j.after)))]
    order = {j.name: i for i, j in enumerate(pretrain)}
    fresh: dict[str, list[Job]] = {}
    later: list[Job] = []
    for job in (j for j in jobs if j.kind == "glue"):
        run, task = job.name.split("/", 1)
        (fresh.setdefault(task, []) if run in order else later).append(job)
    out: list[tuple[list[Job], str | None]] = [(pretrain, None)] if pretrain else []
    for task_jobs in fresh.values():
        out.append((sorted(task_jobs, key=lambda j: order[j.name.split("/")[0]]), "pretrain"))
    out += [(list(g), None) for _, g in groupby(later, key=lambda j: (j.logs, tuple(j.after)))]
    out += [([j], None) for j in jobs if j.kind == "report"]
    return out


def submit(
    jobs: list[Job],
    slurm: SlurmOptions,
    submitted: dict[str, tuple[str, str]],
    hours: float | None,
    queued: dict,
    runs_dir: Path,
    singleton: bool = False,
    lane: Callable[[str], int] | None = None,
) -> None:
    """Submit `jobs` (module docstring). Fills `submitted`: {job name: (Slurm id, its stderr file)}; a job waits
    on the `queued` ones (still in Slurm from an earlier launch) as on those. `lane`: a run's lane under
    --max-parallel. Submitted without this process's Slurm variables (submitit's clean_env), so that a sweep
    started inside a job does not hand its allocation on."""
    import submitit

    pretrain_array = None
    several = sum(j.kind == "pretrain" for j in jobs) >= 2
    singleton = singleton or lane is not None
    for group, on in groups(jobs, arrays=several and not singleton):
        first = group[0]
        array = len(group) > 1 or first.kind == "glue"
        shared = len({j.name.split("/")[0] for j in group}) > 1  # several runs' jobs: logs linked from each run
        folder = runs_dir / SWEEPS / ARRAY_LOGS if shared else first.logs
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", **slurm.executor(first.kind))
        parameters = slurm.parameters(first.kind, hours)
        waits = dependencies(first, {**queued, **submitted}, pretrain_array if on else None, singleton)
        extra = {"dependency": ",".join(waits), "kill-on-invalid-dep": "yes"} if waits else {}
        parameters["slurm_additional_parameters"] = {**parameters.get("slurm_additional_parameters", {}), **extra}
        if lane is not None:  # a singleton does not hold back its own array's elements: one at a time (%1)
            parameters["slurm_array_parallelism"] = 1
        executor.update_parameters(name=job_name(group, runs_dir, lane), **parameters)
        for job in group:  # the child's time to checkpoint after the warning, less 30 s for the requeue
            job.grace_s = max(10.0, parameters["slurm_signal_delay_s"] - 30.0)
        try:
            with submitit.helpers.clean_env():
                if array:
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
            link_logs(job, handle)
        if first.kind == "pretrain" and array:
            pretrain_array = handles[0].job_id.split("_")[0]


def dependencies(first: Job, known: dict, pretrain_array: str | None, singleton: bool) -> list[str]:
    """What a submission waits on: its pretraining array element by element (`aftercorr`), or the jobs its
    `after` names (their ids: queued before or submitted now), all of them (`afterany`) for the report."""
    if pretrain_array:
        waits = [f"aftercorr:{pretrain_array}"]
    else:
        after = sorted({known[name][0].split("_")[0] for name in first.after if name in known})
        kind = "afterany" if first.kind == "report" else "afterok"
        waits = [f"{kind}:{':'.join(after)}"] if after else []
    return waits + (["singleton"] if singleton else [])


def job_name(group: list[Job], runs_dir: Path, lane: Callable[[str], int] | None = None) -> str:
    """`cs-<run>-<kind>` for one run's jobs; an array of several runs' `cs-<RUNS_DIR name>-<kind>[-<task>]`;
    under --max-parallel, a run's jobs `cs-<RUNS_DIR name>-<path hash>-lane<k>` (the hash: two sweeps into
    folders of one name do not share lanes)."""
    runs = {j.name.split("/")[0] for j in group}
    first = group[0]
    if lane is not None and first.kind != "report":
        where = runs_dir.resolve()
        return f"cs-{where.name}-{hashlib.sha1(str(where).encode()).hexdigest()[:6]}-lane{lane(min(runs))}"
    if len(runs) == 1:
        return f"cs-{first.name.split('/')[0]}-{first.kind}"
    task = f"-{first.name.split('/', 1)[1]}" if first.kind == "glue" else ""
    return f"cs-{runs_dir.resolve().name}-{first.kind}{task}"


def link_logs(job: Job, handle) -> None:
    """<run>/logs/<id> -> the element's folder, where the sweep's arrays keep it (the run folder's contract)."""
    folder = Path(handle.paths.folder)
    if folder.parent == job.logs:
        return
    job.logs.mkdir(parents=True, exist_ok=True)
    link = job.logs / handle.job_id
    if not link.exists() and not link.is_symlink():
        os.symlink(folder, link, target_is_directory=True)
