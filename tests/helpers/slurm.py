"""The sweep's command lines and Slurm's answers, for the tests on the local Slurm."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SHORT = ["hours=0.0008", "impl.log_seconds=1", "impl.eval_minutes=0", "impl.device=cpu"]  # ~3 s of training


def sweep_args(runs: Path, cache: Path, glue: Path, *extra: str, blocks="preln,sasp", later=()) -> list[str]:
    """A smoke sweep on generated GLUE data; `later`: overrides after the short budget's (they win)."""
    return [
        "sweep",
        "--blocks",
        blocks,
        "--seeds",
        "0",
        "--budget",
        "smoke",
        "--protocol",
        "smoke",
        "--tasks",
        "rte",
        "--glue",
        "epochs=1",
        "--data-dir",
        str(glue),
        "--runs-dir",
        str(runs),
        *extra,
        *SHORT,
        *later,
        f"data.cache_dir={cache}",
    ]


def slurm_missing() -> str | None:
    """Why no Slurm can take jobs here, or None when one answers (started by `bash .ci/local-slurm`, as CI does;
    the tests never install or start it themselves)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "no Slurm here: `bash .ci/local-slurm` (as root) starts a one-node cluster"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install cramming-simple[slurm])"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10).stdout
    except subprocess.TimeoutExpired:
        return "sinfo did not answer: is slurmctld running? (bash .ci/local-slurm)"
    if not any(state.strip().rstrip("*") in ("idle", "mix", "alloc") for state in nodes.splitlines()):
        return f"no Slurm node takes jobs (sinfo: {nodes.strip() or 'nothing'}); bash .ci/local-slurm starts one"
    return None


def slurm_job_state(job_id: str) -> str:
    """A job's state from Slurm: `scontrol show job` while it remembers it, else the job-completion log."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    base, _, element = job_id.partition("_")  # an array's element: ArrayJobId=<base> ArrayTaskId=<element>
    for line in Path("/var/lib/cramming-simple-slurm/jobcomp.txt").read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        ours = fields.get("ArrayJobId") == base and fields.get("ArrayTaskId") == element
        if ours if element else fields.get("JobId") == job_id:
            return fields["JobState"]
    return "UNKNOWN"
