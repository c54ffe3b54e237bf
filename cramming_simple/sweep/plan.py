"""A sweep: the (block x seed) pretraining runs of one budget, each run's GLUE tasks, and the report, as a plan
of jobs that a launcher runs here or submits to Slurm (sweep.launch).

Every job is a command line of this program (`python -m cramming_simple ...`), run in its own process: the
same code path, exit codes and logs as by hand, and a SIGTERM from the scheduler reaches the pretraining
process itself, which checkpoints and exits (code 4) so that a requeued job resumes it. Jobs are idempotent:
pretraining always passes `--resume-or-restart` (a run killed before its first checkpoint starts over), GLUE
skips the pairs it has, and the planner leaves out what is done (a completed run, a task whose every seed has a
result of this protocol on this model: ok, or a seeded failure), so resubmitting a sweep redoes only what is
missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import require
from ..glue.config import load_protocol, protocol_hash
from ..glue.tasks import load_tasks
from ..hardware import find_reference
from ..model import block_spec
from ..runs import CALIBRATION_DIR, GLUE, MODEL, SUMMARY, glue_result, glue_result_is_of, model_hash, read_summary
from ..runtime import read_json
from .job import Job

REPORT = "report"  # RUNS_DIR/report/: the sweep's report, unless --out says otherwise


@dataclass
class SweepConfig:
    """What a `sweep` command line says: blocks x seeds of one budget, GLUE, the report, and where."""

    blocks: list[str]
    seeds: list[int]
    budget: str
    runs_dir: Path
    protocol: str = "paper"
    tasks: str = "all"
    data_dir: str | None = None
    overrides: list[str] = field(default_factory=list)  # the pretraining's key=value overrides
    glue_args: list[str] = field(default_factory=list)  # extra glue arguments (protocol overrides)
    out: Path | None = None
    reference: str | None = None  # a reference budget (--reference): every run shares one calibration per device
    max_parallel: int | None = None  # --max-parallel: at most this many of the sweep's jobs at once, all kinds

    @property
    def run_names(self) -> list[str]:
        """Every run of the sweep, in plan order (blocks, then seeds): done or not."""
        return [run_name(b, self.budget, s, self.reference_name) for b in self.blocks for s in self.seeds]

    def lane(self, run: str) -> int:
        """The lane of a run's jobs under --max-parallel: its place in the plan, modulo the cap (the same lane at
        every launch, so that jobs still queued from an earlier one count against the same cap)."""
        return self.run_names.index(run) % (self.max_parallel or 1)

    @property
    def reference_name(self) -> str | None:
        """The reference's own name (a path given names its file's entry)."""
        return find_reference(self.reference).name if self.reference else None

    def validate(self) -> None:
        require(self.blocks, "--blocks needs at least one block")
        require(self.seeds, "--seeds needs at least one seed")
        require(self.max_parallel is None or self.max_parallel >= 1, "--max-parallel takes a whole number >= 1")
        for block in self.blocks:
            block_spec(block)  # an unknown block fails here, listing the valid ones
        if self.reference:
            find_reference(self.reference)  # an unknown one fails here, naming the known ones

    @property
    def hours(self) -> float:
        """The budget's hours with the overrides (a reference budget's: hours on the reference), which set
        pretraining's Slurm time limit."""
        from ..train.config import PretrainConfig

        return PretrainConfig.from_budget(self.budget, self.blocks[0], self.overrides).hours

    @property
    def scheduler_locks(self) -> bool:
        """impl.lock=none: Slurm keeps a second job out of a run folder (each job a singleton of its name)."""
        return "impl.lock=none" in self.overrides

    @property
    def report_dir(self) -> Path:
        return self.out or self.runs_dir / REPORT

    def describe(self) -> dict:
        """What a sweep record keeps of it, so that `sweep --status RUNS_DIR` knows the plan without the command."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict, runs_dir: Path) -> SweepConfig:
        fields = {**record, "runs_dir": runs_dir, "out": Path(record["out"]) if record.get("out") else None}
        return cls(**fields)


def run_name(block: str, budget: str, seed: int, reference: str | None = None) -> str:
    """`<block>-<budget>-s<seed>`, as `make all PRETRAIN_SEEDS=...` names them; a reference budget's runs
    `<block>-<budget>-<reference>-s<seed>` (what `pretrain --reference` names a run, with the seed)."""
    return f"{block_spec(block).name}-{budget}" + (f"-{reference}" if reference else "") + f"-s{seed}"


def plan(cfg: SweepConfig) -> list[Job]:
    """The jobs still to do, in dependency order: pretraining, GLUE per task, the report (last: whenever anything
    else is to do, or it is missing)."""
    cfg.validate()
    protocol_name, protocol = load_protocol(cfg.protocol, [a for a in cfg.glue_args if "=" in a])
    wanted = protocol_hash(protocol)
    tasks = load_tasks().select(cfg.tasks)
    jobs: list[Job] = []
    runs = []
    for block in cfg.blocks:
        for seed in cfg.seeds:
            name = run_name(block, cfg.budget, seed, cfg.reference_name)
            run_dir = cfg.runs_dir / name
            runs.append(run_dir)
            pretrain, model = None, model_hash(run_dir / MODEL)
            if not completed(run_dir):
                pretrain = Job("pretrain", name, pretrain_argv(cfg, block, seed, name), run_dir / "logs")
                jobs.append(pretrain)
            for task in tasks:
                if pretrain is None and all(glue_outcome(run_dir, task, s, wanted, model) for s in protocol.seeds):
                    continue
                after = [pretrain.name] if pretrain else []
                jobs.append(Job("glue", f"{name}/{task}", glue_argv(cfg, run_dir, task), run_dir / "logs", after))
    if jobs or not (cfg.report_dir / "index.md").exists():  # a finished sweep plans nothing, not even the report
        report = ["report", *map(str, runs), "--out", str(cfg.report_dir)]
        jobs.append(Job("report", REPORT, report, cfg.report_dir / "logs", [j.name for j in jobs]))
    return jobs


def pretrain_argv(cfg: SweepConfig, block: str, seed: int, name: str) -> list[str]:
    return [
        "pretrain",
        "--block",
        block,
        "--budget",
        cfg.budget,
        "--runs-dir",
        str(cfg.runs_dir),
        "--name",
        name,
        "--resume-or-restart",
        *(
            ["--reference", cfg.reference, "--calibration-dir", str(cfg.runs_dir / CALIBRATION_DIR)]
            if cfg.reference
            else []
        ),
        f"train.seed={seed}",
        *cfg.overrides,
    ]


def glue_argv(cfg: SweepConfig, run_dir: Path, task: str) -> list[str]:
    data = ["--data-dir", cfg.data_dir] if cfg.data_dir else []
    return ["glue", str(run_dir), "--protocol", cfg.protocol, "--tasks", task, *data, *cfg.glue_args]


def completed(run_dir: Path) -> bool:
    return (run_dir / SUMMARY).exists() and bool((read_summary(run_dir) or {}).get("completed"))


def glue_outcome(run_dir: Path, task: str, seed: int, protocol: str, model: str | None) -> str | None:
    """A task/seed's result of this protocol on this model (`glue_result_is_of`, as `glue` decides): "ok",
    "failed" (a non-finite loss: seeded, so a rerun fails the same way, and the glue command does not redo it
    either), or None (none, damaged, another protocol's or model's: to do)."""
    path = glue_result(run_dir / GLUE, task, seed)
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except Exception:  # noqa: BLE001 - damaged: the glue job runs it again
        return None
    return record.get("status") if glue_result_is_of(record, protocol, model) else None


def glue_ok(run_dir: Path, task: str, seed: int, protocol: str, model: str | None) -> bool:
    return glue_outcome(run_dir, task, seed, protocol, model) == "ok"


def plan_rows(cfg: SweepConfig) -> list[tuple[str, str, Path, str | None, str, list[int]]]:
    """Every job of the whole sweep, done or not: (name, kind, run folder, task, protocol hash, GLUE seeds)."""
    _, protocol = load_protocol(cfg.protocol, [a for a in cfg.glue_args if "=" in a])
    wanted, rows = protocol_hash(protocol), []
    for block in cfg.blocks:
        for seed in cfg.seeds:
            name = run_name(block, cfg.budget, seed, cfg.reference_name)
            rows.append((name, "pretrain", cfg.runs_dir / name, None, wanted, protocol.seeds))
            for task in load_tasks().select(cfg.tasks):
                rows.append((f"{name}/{task}", "glue", cfg.runs_dir / name, task, wanted, protocol.seeds))
    return rows
