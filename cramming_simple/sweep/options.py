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
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Union, get_type_hints

from ..errors import ConfigError

KINDS = ("pretrain", "glue", "report")
GENERIC = ("mem_gb", "nodes", "gpus_per_node", "cpus_per_task", "tasks_per_node")  # AutoExecutor's own names
EXECUTOR = {"python", "max_num_timeout"}  # the executor's constructor, not a job parameter
TRUE, FALSE = {"true", "yes", "1", "on"}, {"false", "no", "0", "off"}

CPUS_PER_GPU = 8  # cpus_per_task per GPU when not given: data loading and the launcher never share a core
GLUE_MINUTES, REPORT_MINUTES = 240, 60
MARGIN = 1.15, 30  # pretraining's time: budget minutes x 1.15 + 30 (start, compile, evaluation, checkpoints)
MAX_TIMEOUTS = {"pretrain": 30, "glue": 3, "report": 3}  # requeues after a time limit, per kind of job


@dataclass
class JobOptions:
    """One kind of job's `--slurm` options, typed: each value is converted by its field's type (None or empty:
    not given). The names are submitit's (its SlurmExecutor parameters as of submitit 1.5, sbatch's long options
    with underscores) and AutoExecutor's generic ones; `time` is in minutes."""

    time: Optional[int] = None
    mem_gb: Optional[int] = None
    nodes: Optional[int] = None
    gpus_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    tasks_per_node: Optional[int] = None
    cpus_per_gpu: Optional[int] = None
    gpus_per_task: Optional[int] = None
    ntasks_per_node: Optional[int] = None
    array_parallelism: Optional[int] = None
    signal_delay_s: Optional[int] = None  # may be 0
    max_num_timeout: Optional[int] = None  # may be 0
    exclusive: Union[bool, str, None] = None  # true: #SBATCH --exclusive; a word (user, mcs) stays a word
    use_srun: Optional[bool] = None
    stderr_to_stdout: Optional[bool] = None
    setup: List[str] = field(default_factory=list)  # shell lines, in order (repeat the option)
    teardown: List[str] = field(default_factory=list)
    srun_args: List[str] = field(default_factory=list)  # shell words
    python: Optional[str] = None  # the command that runs Python in the job (a container's)
    account: Optional[str] = None
    comment: Optional[str] = None
    constraint: Optional[str] = None
    exclude: Optional[str] = None
    gres: Optional[str] = None
    mail_type: Optional[str] = None
    mail_user: Optional[str] = None
    mem: Optional[str] = None
    mem_per_cpu: Optional[str] = None
    mem_per_gpu: Optional[str] = None
    nodelist: Optional[str] = None
    partition: Optional[str] = None
    qos: Optional[str] = None
    wckey: Optional[str] = None
    additional_parameters: Dict[str, Union[str, bool]] = field(default_factory=dict)  # any other #SBATCH --NAME

    def set(self, name: str, value: str) -> None:
        """One `name=value`, converted by the field's type (a list field appends)."""
        kind = FIELD_TYPES[name]
        current = getattr(self, name)
        if kind == List[str]:
            setattr(self, name, [*current, *(shlex.split(value) if name == "srun_args" else [value])])
        elif kind == Optional[int]:
            setattr(self, name, as_int(name, value))
        elif kind == Optional[bool] or kind == Union[bool, str, None]:
            setattr(self, name, as_bool(name, value, words=kind != Optional[bool]))
        else:
            setattr(self, name, value)

    def given(self) -> dict:
        """The options that were given, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, [], {})}


FIELD_TYPES = get_type_hints(JobOptions)
KNOWN = set(FIELD_TYPES) - {"additional_parameters"}


def as_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"--slurm {name}={value}: an integer{' (minutes)' if name == 'time' else ''}") from None
    if number < (0 if name in ("signal_delay_s", "max_num_timeout") else 1):
        raise ConfigError(f"--slurm {name}={value}: must be positive")
    return number


def as_bool(name: str, value: str, words: bool) -> bool | str:
    if value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    if not words:
        raise ConfigError(f"--slurm {name}={value}: true or false")
    return value


@dataclass
class SlurmOptions:
    """`--slurm` options by kind ("" for the plain ones), each kind's typed."""

    by_kind: Dict[str, JobOptions] = field(default_factory=lambda: {kind: JobOptions() for kind in ("", *KINDS)})

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
            options.additional_parameters[extra] = True if value.lower() == "true" else value
            return
        if "." in name:
            raise ConfigError(
                f"--slurm {kind + '.' if kind else ''}{name}: a prefix names a kind of job ({', '.join(KINDS)})"
            )
        if name == "timeout_min":
            name = "time"
        if name not in KNOWN:
            raise ConfigError(
                f"--slurm {name}: not an option here (the sweep sets dependency and job names itself); one of "
                f"{', '.join(sorted(KNOWN))}, or additional_parameters.NAME for any other #SBATCH --NAME"
            )
        options.set(name, value)

    def check(self) -> None:
        pretrain = self.merged("pretrain")
        if pretrain.get("tasks_per_node", 1) > 1 and pretrain.get("gpus_per_node", 0) > 0:
            raise ConfigError(
                "--slurm tasks_per_node must be 1 with GPUs: pretraining starts one torchrun per node, which starts "
                "one process per GPU (several nodes: --slurm pretrain.nodes=N)"
            )

    def has(self, name: str) -> bool:
        """Whether `name` was given, for any kind of job."""
        return any(name in options.given() for options in self.by_kind.values())

    def merged(self, kind: str) -> dict:
        """The options of one kind of job: the plain ones (nodes and GPUs only for pretraining), then its own."""
        plain = self.by_kind[""].given()
        if kind != "pretrain":
            plain.pop("nodes", None)
            gpus = plain.pop("gpus_per_node", 0)
            if kind == "glue" and gpus:
                plain["gpus_per_node"] = 1  # one task on one GPU: a GLUE element never needs a whole node
        own = self.by_kind[kind].given()
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
