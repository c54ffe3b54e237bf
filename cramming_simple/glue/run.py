"""GLUE's domain entry point, like `pretrain(cfg)`: a typed run config (`GlueRun`) and `run(config)`.

`GlueRun.from_options` is where a `glue` invocation is decided and checked: the run folder and which of its
models (the final one or a snapshot), the protocol with its overrides, tasks, seeds, the data source and the
trackers. Overrides are routed here, in one place: `impl.tracker=` (spelled as pretraining spells it) picks
trackers, every other key is the protocol's. `run(config)` checks everything that can be wrong (model,
tokenizer, every task's data, pairs in use by another process) before the first step of any task, then runs the
task/seed pairs that are not done (glue.runner) and writes glue/summary.json.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ..config import ConfigError, dotlist, require
from ..data.tokenizer import check_tokenizer, load_tokenizer, tokenizer_sha256
from ..folders import check_model
from ..profiles import profile_of
from ..runs import GLUE, MODEL, SUMMARY, glue_name, model_hash, read_summary, snapshot_name
from ..runtime import remove_stale_temporaries
from ..tracking import Trackers, check_trackers
from .config import Protocol, load_protocol, protocol_hash
from .data import Source, check_counts, load_task, open_source, shown_inputs
from .runner import Job, check_not_in_use, result_line, run_here, run_pool, write_summary
from .score import results_table
from .tasks import TaskTable, load_tasks

log = logging.getLogger(__name__)

ROUTED = ("impl.tracker",)  # the non-protocol keys a glue command line may set


@dataclass
class GlueRun:
    """One `glue` run of one pretraining run: what to fine-tune, under which protocol, on which tasks and data."""

    run_dir: Path
    protocol_name: str
    protocol: Protocol
    tasks: list[str]
    table: TaskTable
    data_dir: str | None = None
    trackers: list[str] = field(default_factory=list)
    at: float | None = None  # a snapshot's budget fraction (model@0.50/), None: the final model
    workers: int = 1  # processes, one per GPU
    force: bool = False  # redo pairs that already have a result
    save_models: bool = False  # keep every fine-tuned model
    overrides: tuple[str, ...] = ()  # the protocol's key=value overrides as given (recorded, for the model card)

    @classmethod
    def from_options(
        cls,
        run_dir: str | Path,
        protocol: str = "paper",
        overrides: list[str] = (),
        tasks: str = "all",
        seeds: str | None = None,
        data_dir: str | None = None,
        at: float | None = None,
        gpus: int = 1,
        force: bool = False,
        save_models: bool = False,
    ) -> GlueRun:
        """The config a command line describes; a typo in a protocol key or a task fails here."""
        protocol_overrides, trackers = route_overrides(list(overrides))
        with_seeds = [*protocol_overrides, *([f"seeds=[{seeds}]"] if seeds else [])]
        name, checked = load_protocol(protocol, with_seeds)
        table = load_tasks()
        require(gpus >= 1, f"--gpus must be at least 1, got {gpus}")
        first = checked.warmup_task if checked.warmup_from == "first_task" else None
        require(
            first is None or first in table.tasks,
            f"warmup_task must be a GLUE task ({', '.join(table.tasks)}), got {first!r}",
        )
        return cls(
            Path(run_dir), name, checked, table.select(tasks), table, data_dir, trackers, at, gpus, force, save_models,
            tuple(protocol_overrides),
        )  # fmt: skip

    @property
    def model_name(self) -> str:
        return MODEL if self.at is None else snapshot_name(self.at)

    @property
    def model_dir(self) -> Path:
        return self.run_dir / self.model_name

    @property
    def glue_name(self) -> str:
        return GLUE if self.at is None else glue_name(self.at)

    @property
    def first_task(self) -> str | None:
        """warmup_from=first_task: the task whose size sets every task's warmup (the published schedule)."""
        return self.protocol.warmup_task if self.protocol.warmup_from == "first_task" else None


def route_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the protocol's overrides, the trackers): `impl.tracker=` picks trackers, any other `impl.` key is refused,
    the rest belong to the protocol (whose typed config refuses unknown keys)."""
    impl = [o for o in overrides if o.startswith("impl.")]
    unknown = [o for o in impl if o.split("=", 1)[0] not in ROUTED]
    require(not unknown, f"glue takes {', '.join(ROUTED)} and protocol keys; not {', '.join(unknown)}")
    chosen = OmegaConf.to_container(dotlist(impl)).get("impl", {}).get("tracker", "none")
    return [o for o in overrides if o not in impl], check_trackers(chosen)


def run(config: GlueRun, show_inputs: int | None = None) -> int:
    """Fine-tune and score every task/seed pair of `config` not done yet; 0, or 1 when some pair failed.
    `show_inputs`: print each task's first N training inputs as the model gets them, and train nothing."""
    source, tokenizer, block = check_inputs(config)
    if show_inputs is not None:
        print_inputs(config, source, tokenizer, show_inputs)
        return 0
    job = make_job(config, source)
    remove_stale_temporaries(job.glue_dir, recursive=True, dead_only=True)  # what killed GLUE writers left
    plan = [(t, s) for t in config.tasks for s in config.protocol.seeds]
    todo = [item for item in plan if config.force or not job.is_done(*item, warn=True)]
    check_not_in_use(job, todo)
    profile = profile_of("glue", dataclasses.asdict(config.protocol))
    log.info(
        f"GLUE on {config.model_dir} ({block}): protocol {config.protocol_name} [{job.protocol_hash}, profile "
        f"{profile}], data from {source.describe()}, results in {job.glue_dir}"
    )
    done_before = f" ({len(plan) - len(todo)} done before; --force redoes them)" if len(todo) < len(plan) else ""
    log.info(f"{len(todo)} of {len(plan)} task/seed runs to do{done_before}")
    errors = run_pairs(config, job, todo)
    log.info(results_table(write_summary(job, config.tasks, config.protocol.seeds), config.tasks))
    for error in errors:
        log.error(error)
    return 1 if errors else 0


def check_inputs(config: GlueRun) -> tuple[Source, object, str]:
    """The model, its tokenizer and every task's data, checked before any training: (source, tokenizer, block)."""
    if config.at is not None and not config.model_dir.is_dir():
        kept = sorted(p.name for p in config.run_dir.glob(f"{MODEL}@*") if p.is_dir())
        raise ConfigError(
            f"{config.run_dir} has no snapshot {config.model_name}/ (kept: {', '.join(kept) or 'none'}); snapshots "
            "are kept by pretraining with impl.keep_at=[0.25,0.5,0.75]"
        )
    arch, block = check_model(config.model_dir)
    tokenizer = load_tokenizer(config.model_dir)
    where = f"the tokenizer in {config.model_dir}"
    check_tokenizer(tokenizer, arch.vocab_size, where=where, pad_token_id=arch.pad_token_id)
    check_pretrained_tokenizer(config.run_dir, config.model_dir, tokenizer)
    first = config.first_task
    wanted = [*config.tasks, *([first] if first not in (None, *config.tasks) else [])]
    source = open_source(config.data_dir, config.table, wanted)
    for task in config.tasks:
        check_counts(task, load_task(source, task, config.table.tasks[task]), config.protocol)
    return source, tokenizer, block


def check_pretrained_tokenizer(run_dir: Path, model_dir: Path, tokenizer) -> None:
    """The model folder's tokenizer must be the one pretraining read its data with (summary.json records its
    hash): another one would feed the model ids it never saw. Runs from before the record are not checked."""
    summary = read_summary(run_dir) if (run_dir / SUMMARY).exists() else None
    recorded = ((summary or {}).get("data") or {}).get("tokenizer_sha256")
    if recorded and recorded != tokenizer_sha256(tokenizer):
        raise ConfigError(
            f"the tokenizer in {model_dir} is not the one {run_dir} was pretrained with (sha256 "
            f"{tokenizer_sha256(tokenizer)[:12]}, recorded {recorded[:12]}): restore that folder's tokenizer files"
        )


def print_inputs(config: GlueRun, source: Source, tokenizer, count: int) -> None:
    require(count > 0, f"--show-inputs needs a positive count, got {count}")
    for task in config.tasks:
        train = load_task(source, task, config.table.tasks[task])["train"]
        lines = shown_inputs(tokenizer, train, config.protocol, count)
        kind = config.protocol.single_text if len(train.texts) == 1 else "pairs"
        log.info(f"{task} ({kind}), first {len(lines)}:")
        log.info("\n".join(f"  {line}" for line in lines))


def make_job(config: GlueRun, source: Source) -> Job:
    first, examples = config.first_task, None
    if first is not None:  # every task's warmup is this task's (the published runs' schedule)
        available = len(load_task(source, first, config.table.tasks[first])["train"])
        examples = min(available, config.protocol.max_train_examples or available)
    return Job(
        config.run_dir,
        config.protocol_name,
        config.protocol,
        protocol_hash(config.protocol),
        model_hash(config.model_dir) or "",
        config.table,
        source,
        config.force,
        config.model_name,
        config.glue_name,
        examples,
        config.save_models,
        overrides=config.overrides,
    )


def run_pairs(config: GlueRun, job: Job, todo: list) -> list[str]:
    """The pairs to do, here or on worker processes; every result is logged, summarised and tracked at once."""
    protocol = {"protocol": config.protocol_name, **dataclasses.asdict(config.protocol)}
    tracked = Trackers(config.trackers, config.run_dir, config.run_dir.name, protocol, job=job.glue_dir.name)

    def on_result(record: dict) -> None:
        log.info(result_line(record))
        write_summary(job, config.tasks, config.protocol.seeds)
        for epoch in record.get("epochs") or []:  # the per-epoch rows, to the trackers (this process only)
            metrics = {f"{split}/{k}": v for split, m in epoch["metrics"].items() for k, v in m.items()}
            where = f"{job.glue_dir.name}/{record['task']}/seed{record['seed']}"
            tracked.log({**epoch, **metrics}, epoch["epoch"], where)

    workers = min(config.workers, len(todo))
    with tracked:
        return run_pool(job, todo, workers, on_result) if workers > 1 else run_here(job, todo, on_result)
