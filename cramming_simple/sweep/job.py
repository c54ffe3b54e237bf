"""One job of a sweep: a command line of this program, run in a child process, here or inside a Slurm job.

A pretraining job whose Slurm job has several tasks (one per node) or several GPUs on its node runs under
torchrun, one torchrun per task: `--nnodes` = the job's tasks, c10d rendezvous on the job's first node,
`--nproc-per-node` = the node's GPUs. A run on several nodes stays torchrun's job; this only starts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..runs import GLUE

GRACE_S = 90.0  # the default signal delay (120 s) less 30 s
RDZV_PORTS = (20000, 10000)  # the rendezvous port: 20000 + job id mod 10000 (two jobs on one head node differ)


@dataclass
class Job:
    """One job of the plan: a command line of this program, where its logs go, and what it waits for."""

    kind: str  # pretrain | glue | report
    name: str  # the run (pretrain, glue: `<run>/<task>`) or "report"
    argv: list[str]
    logs: Path  # a folder in the run's folder (the report's: in its output folder)
    after: list[str] = field(default_factory=list)  # names of the jobs it depends on
    # Seconds the job gives its child to checkpoint and exit after Slurm's warning (the signal's delay less a
    # margin for the requeue): then the child is killed and the job requeued anyway (the last checkpoint stands)
    grace_s: float = GRACE_S

    def command(self, env: dict | None = None) -> list[str]:
        """`python -m cramming_simple ARGV`, under torchrun for a pretraining job with several tasks or GPUs."""
        launcher = torchrun(os.environ if env is None else env) if self.kind == "pretrain" else None
        return [*(launcher or [sys.executable, "-m"]), "cramming_simple", *self.argv]

    def __call__(self, log: Path | None = None) -> int:
        """Run the command in a child process; its exit code. Non-zero raises, so that the scheduler sees a
        failed job. With `log`, the child's output also goes to that file (Slurm jobs: submitit's log files)."""
        command = self.command()
        self.started = time.time()
        line = f"[sweep] {self.name}: {' '.join(command)}\n"  # the exact command, at the top of its log
        print(line, end="", file=sys.stderr, flush=True)
        # Slurm sends its time-limit warning (SIGUSR2) to every process of the job: the child ignores it (so does
        # torchrun, which would die of it), pretraining ranks handle it themselves, and this process checkpoints
        # torchrun kills its ranks this long after it passes a SIGTERM on (its default: 30 s, too short to checkpoint)
        env = {**os.environ, "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(int(self.grace_s))}
        if log is None:
            self.child = subprocess.Popen(command, preexec_fn=ignore_usr2, env=env)
        else:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(line)
            out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
            self.child = subprocess.Popen(command, preexec_fn=ignore_usr2, env=env, **out)
            tee(self.child.stdout, log)
        code = self.child.wait()
        if code != 0:
            raise RuntimeError(f"{self.name}: `cramming-simple {' '.join(self.argv)}` exited with {code}")
        return code

    def checkpoint(self, *args, **kwargs):
        """submitit's hook before a time limit or a preemption (SIGUSR2): the pretraining process checkpoints
        (SIGTERM, its usual path) and the same job is requeued; it resumes from the checkpoint, with the budget's
        clock."""
        import submitit

        if self.kind != "pretrain" and at_time_limit() and not self.progressed():
            print(
                f"[sweep] {self.name}: at its time limit with no new result since it started: not requeued (it would "
                f"run out of time the same way; give it more: --slurm {self.kind}.time=MINUTES)",
                file=sys.stderr,
                flush=True,
            )
            return None  # submitit: no requeue, the job ends as not completed
        # This runs in submitit's signal handler, which may have interrupted Popen.wait() holding its lock: ask
        # the kernel, never the Popen object (its poll() would say "running" forever and wait() would deadlock)
        child = getattr(self, "child", None)
        if child is not None and running(child.pid):
            os.kill(child.pid, signal.SIGTERM)  # torchrun passes it on to its ranks
            if not wait_until_gone(child.pid, self.grace_s):  # a hung collective, a stuck write: requeue anyway
                print(
                    f"[sweep] {self.name}: still running {self.grace_s:g} s after SIGTERM: killed; the requeued job "
                    "goes on from the last checkpoint",
                    file=sys.stderr,
                    flush=True,
                )
                os.kill(child.pid, signal.SIGKILL)
                wait_until_gone(child.pid, 10.0)
        again = Job(self.kind, self.name, self.argv, self.logs, self.after, self.grace_s)
        return submitit.helpers.DelayedSubmission(again)

    def progressed(self) -> bool:
        """Whether a GLUE job wrote a task/seed result since it started (the report has no partial results)."""
        if self.kind != "glue" or "--tasks" not in self.argv:
            return False
        started = getattr(self, "started", 0.0)
        task = self.argv[self.argv.index("--tasks") + 1]
        results = (self.logs.parent / GLUE / task).glob("seed*.json")
        return any(path.stat().st_mtime >= started for path in results)


def wait_until_gone(pid: int, seconds: float) -> bool:
    """Whether the child exited within `seconds` (asked of the kernel: see Job.checkpoint)."""
    deadline = time.monotonic() + seconds
    while running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def at_time_limit(env=None) -> bool:
    """Whether Slurm's warning signal came from the job's time limit rather than a preemption: within 10 minutes
    of SLURM_JOB_END_TIME (the signal comes signal_delay_s before it). Without that variable: assumed so."""
    end = (os.environ if env is None else env).get("SLURM_JOB_END_TIME")
    return not end or time.time() >= int(end) - 600


def ignore_usr2() -> None:  # in the child, between fork and exec
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def running(pid: int) -> bool:
    """Whether a child has not exited yet, without reaping it (Popen reaps it and keeps its exit code)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # already reaped
        return False


def tee(stream, log: Path) -> None:
    """Copy a child's output to our stdout and to `log` as it comes (chunks, not lines: nothing waits on one)."""
    with open(log, "ab") as out:
        for chunk in iter(lambda: os.read(stream.fileno(), 65536), b""):
            out.write(chunk)
            out.flush()
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()


def gpus_on_node(env) -> int:
    if env.get("SLURM_GPUS_ON_NODE"):
        return int(env["SLURM_GPUS_ON_NODE"])
    visible = env.get("CUDA_VISIBLE_DEVICES", "")
    return len([d for d in visible.split(",") if d.strip()]) if visible else 0


def torchrun(env) -> list[str] | None:
    """torchrun's command line for this Slurm task, or None when one process is the whole job.

    One torchrun per task: `sweep --slurm pretrain.nodes=N` gives N tasks on N nodes (tasks_per_node stays 1, and
    `sweep` refuses more with GPUs: each torchrun starts one process per GPU of its node). Two tasks on one node
    without GPUs are two "nodes" on one machine, which is how the tests try the rendezvous."""
    tasks, gpus = int(env.get("SLURM_NTASKS", "1") or 1), gpus_on_node(env)
    if tasks <= 1 and gpus <= 1:
        return None
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={max(gpus, 1)}"]
    if tasks <= 1:
        return [*run, "--standalone", "-m"]
    job = int(env["SLURM_JOB_ID"])
    head = first_host(env["SLURM_JOB_NODELIST"])
    port = RDZV_PORTS[0] + job % RDZV_PORTS[1]
    rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint={head}:{port}", f"--rdzv-id={job}"]
    return [*run, f"--nnodes={tasks}", *rendezvous, "-m"]


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (`node[03-05,7],gpu1` -> node03), as `scontrol show hostnames` says."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = nodelist.split(",")[0]
    if "[" not in head:
        return head
    prefix, ranges = head.split("[", 1)
    return prefix + ranges.split(",")[0].split("-")[0].rstrip("]")
