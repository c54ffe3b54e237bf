"""`sweep --slurm KEY=VALUE`: typed Slurm options, per kind of job, with defaults by kind (README, "On a cluster").

A key is one of submitit's executor options (sbatch's long options with underscores: `partition`, `account`,
`qos`, `constraint`, `exclusive`, `srun_args`, ...), its generic ones (`time` in minutes, `mem_gb`, `nodes`,
`gpus_per_node`, `cpus_per_task`, `tasks_per_node`), `setup` (a shell line run before the job: repeat it, in
order), `python` (the command that runs Python in the job, e.g. a container's), `max_num_timeout` (requeues after
a time limit), or `additional_parameters.NAME` (any other `#SBATCH --NAME=VALUE`; `=true`: the flag alone).
A kind's prefix (`pretrain.`, `glue.`, `report.`) sets it for that kind of job only and wins over the plain key.

Values are typed here, so that a typo is one line before anything is submitted: integers, booleans
(`exclusive=true` is `#SBATCH --exclusive`; `exclusive=user` stays a word), `srun_args` as shell words.

Defaults by kind, each overridden by the options: pretraining asks for its budget's hours plus a margin, GLUE
for 4 hours and the report for 1; `nodes` and `gpus_per_node` without a prefix are pretraining's (a GLUE element
gets one GPU when pretraining has GPUs, the report none); `cpus_per_task` is 8 per GPU of the job.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

from ..errors import ConfigError

KINDS = ("pretrain", "glue", "report")
GENERIC = ("mem_gb", "nodes", "gpus_per_node", "cpus_per_task", "tasks_per_node")  # AutoExecutor's own names
INTEGERS = {"time", "mem_gb", "nodes", "gpus_per_node", "cpus_per_task", "tasks_per_node", "cpus_per_gpu"}
INTEGERS |= {"gpus_per_task", "array_parallelism", "signal_delay_s", "max_num_timeout", "ntasks_per_node"}
BOOLEANS = {"exclusive", "use_srun", "stderr_to_stdout"}
REPEATED = {"setup", "teardown", "srun_args"}  # each occurrence adds lines (setup, teardown) or shell words
EXECUTOR = {"python", "max_num_timeout"}  # the executor's constructor, not a job parameter
OURS = {"dependency", "job_name", "array_parallelism"}  # the sweep sets these (array_parallelism: per sweep)
SUBMITIT = {  # submitit's SlurmExecutor parameters (its _valid_parameters), as of submitit 1.5
    "account", "additional_parameters", "comment", "constraint", "cpus_per_gpu", "exclude", "exclusive", "gres",
    "gpus_per_task", "mail_type", "mail_user", "mem", "mem_per_cpu", "mem_per_gpu", "nodelist", "ntasks_per_node",
    "partition", "qos", "setup", "signal_delay_s", "srun_args", "stderr_to_stdout", "teardown", "use_srun", "wckey",
}  # fmt: skip
KNOWN = SUBMITIT | set(GENERIC) | EXECUTOR | {"time", "array_parallelism"}
TRUE, FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}

CPUS_PER_GPU = 8  # cpus_per_task per GPU when not given: data loading and the launcher never share a core
GLUE_MINUTES, REPORT_MINUTES = 240, 60
MARGIN = 1.15, 30  # pretraining's time: budget minutes x 1.15 + 30 (start, compile, evaluation, checkpoints)
MAX_TIMEOUTS = {"pretrain": 30, "glue": 3, "report": 3}  # requeues after a time limit, per kind of job


@dataclass
class SlurmOptions:
    """`--slurm` options by kind ("" for the plain ones), typed."""

    by_kind: dict[str, dict] = field(default_factory=lambda: {kind: {} for kind in ("", *KINDS)})

    @classmethod
    def parse(cls, items: list[str]) -> SlurmOptions:
        options = cls()
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--slurm takes KEY=VALUE, got {item!r}")
            kind, name = key.split(".", 1) if key.split(".", 1)[0] in KINDS and "." in key else ("", key)
            options.set(kind, name, value)
        options.check()
        return options

    def set(self, kind: str, name: str, value: str) -> None:
        options = self.by_kind[kind]
        if name.startswith("additional_parameters."):
            extra = name.split(".", 1)[1]
            if extra.replace("_", "-") in ("dependency", "kill-on-invalid-dep", "job-name", "array"):
                raise ConfigError(f"--slurm {name}: the sweep sets --{extra} itself")
            options.setdefault("additional_parameters", {})[extra] = True if value.lower() == "true" else value
            return
        if "." in name:
            raise ConfigError(
                f"--slurm {kind + '.' if kind else ''}{name}: a prefix names a kind of job ({', '.join(KINDS)})"
            )
        if name == "timeout_min":
            name = "time"
        if name not in KNOWN or name in OURS - {"array_parallelism"}:
            raise ConfigError(
                f"--slurm {name}: not an option here (the sweep sets dependency and job names itself); one of "
                f"{', '.join(sorted(KNOWN))}, or additional_parameters.NAME for any other #SBATCH --NAME"
            )
        if name in REPEATED:
            words = shlex.split(value) if name == "srun_args" else [value]
            options[name] = [*options.get(name, []), *words]
        else:
            options[name] = typed(name, value)

    def check(self) -> None:
        pretrain = self.merged("pretrain")
        if pretrain.get("tasks_per_node", 1) > 1 and pretrain.get("gpus_per_node", 0) > 0:
            raise ConfigError(
                "--slurm tasks_per_node must be 1 with GPUs: pretraining starts one torchrun per node, which starts "
                "one process per GPU (several nodes: --slurm pretrain.nodes=N)"
            )

    def has(self, name: str) -> bool:
        """Whether `name` was given, for any kind of job."""
        return any(name in options for options in self.by_kind.values())

    def merged(self, kind: str) -> dict:
        """The options of one kind of job: the plain ones (nodes and GPUs only for pretraining), then its own."""
        plain = dict(self.by_kind[""])
        if kind != "pretrain":
            plain.pop("nodes", None)
            gpus = plain.pop("gpus_per_node", 0)
            if kind == "glue" and gpus:
                plain["gpus_per_node"] = 1  # one task on one GPU: a GLUE element never needs a whole node
        own = self.by_kind[kind]
        extra = {**plain.get("additional_parameters", {}), **own.get("additional_parameters", {})}
        out = {**plain, **own}
        if extra:
            out["additional_parameters"] = extra
        return out

    def executor(self, kind: str) -> dict:
        """The AutoExecutor constructor's keyword arguments for one kind of job."""
        options = self.merged(kind)
        out = {"slurm_max_num_timeout": options.get("max_num_timeout", MAX_TIMEOUTS[kind])}
        if "python" in options:
            out["slurm_python"] = options["python"]
        return out

    def parameters(self, kind: str, budget_hours: float | None = None) -> dict:
        """update_parameters' keyword arguments for one kind of job, with the defaults by kind."""
        options = {k: v for k, v in self.merged(kind).items() if k not in EXECUTOR}
        minutes = {"glue": GLUE_MINUTES, "report": REPORT_MINUTES}.get(kind)
        if kind == "pretrain":
            minutes = math.ceil(budget_hours * 60 * MARGIN[0] + MARGIN[1]) if budget_hours else 60 * 24 * 2
        options.setdefault("time", minutes)
        if options.get("gpus_per_node") and "cpus_per_task" not in options and "cpus_per_gpu" not in options:
            options["cpus_per_task"] = CPUS_PER_GPU * options["gpus_per_node"]
        if options.get("exclusive") is False:
            del options["exclusive"]  # submitit would write --exclusive=False
        options.setdefault("signal_delay_s", 120)  # SIGUSR2 two minutes before the limit: checkpoint and requeue
        out = {"timeout_min": options.pop("time")}
        for key, value in options.items():
            out[key if key in GENERIC else f"slurm_{key}"] = value
        return out


def typed(name: str, value: str):
    if name in INTEGERS:
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"--slurm {name}={value}: an integer{' (minutes)' if name == 'time' else ''}") from None
        if number < (0 if name in ("signal_delay_s", "max_num_timeout") else 1):
            raise ConfigError(f"--slurm {name}={value}: must be positive")
        return number
    if name in BOOLEANS and value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    if name in BOOLEANS - {"exclusive"}:
        raise ConfigError(f"--slurm {name}={value}: true or false")
    return value
