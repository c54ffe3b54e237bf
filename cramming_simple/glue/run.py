"""GLUE's domain entry point, like `pretrain(cfg)`: `run(config)` of a typed `GlueRun` (glue.config).

`run(config)` checks everything that can be wrong (model,
tokenizer, every task's data, pairs in use by another process) before the first step of any task, then runs the
task/seed pairs that are not done (glue.runner) and writes glue/summary.json.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..config import ConfigError, require
from ..data.tokenizer import check_tokenizer, load_tokenizer, tokenizer_sha256
from ..folders import check_model
from ..profiles import profile_of
from ..runs import MODEL, SUMMARY, model_hash, read_summary
from ..runtime import remove_stale_temporaries
from ..tracking import Trackers
from .config import GlueRun, protocol_hash
from .data import Source, check_counts, load_task, open_source, shown_inputs
from .runner import Job, check_not_in_use, result_line, run_here, run_pool, write_summary
from .score import results_table

log = logging.getLogger(__name__)


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
    return Job.of(config, source, protocol_hash(config.protocol), model_hash(config.model_dir) or "", examples)


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
