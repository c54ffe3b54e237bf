"""Fine-tune a pretrained run on GLUE under a fixed protocol (docs/recipe.md) and score it.

Results go to RUN_DIR/glue/<task>/seed<k>.json, one per task and seed, and RUN_DIR/glue/summary.json (the
nine GLUE columns and their average, mean +- std over seeds), rewritten after every task/seed. A rerun skips
the task/seed pairs already done with the same protocol and model; --force redoes them. Everything (model,
tokenizer, every task's data, pairs in use by another process) is checked before any training starts.

examples:
  cramming-simple glue runs/sas-24h
  cramming-simple glue --block sas --runs-dir runs --protocol cramming --tasks rte,mrpc --seeds 1 lr=2e-5
  cramming-simple glue runs/tiny-smoke --protocol smoke --data-dir ~/glue_data --gpus 2
  cramming-simple glue runs/sas-24h --at 0.5          # the snapshot model@0.50/ (impl.keep_at); results in glue@0.50/
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ..config import ConfigError, require
from ..presets import list_presets

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run folder with model/ in it (or use --block)")
    parser.add_argument(
        "--block",
        help="instead of RUN_DIR: the latest run of this block (a name, path/to/file.py:Class or module:Class) "
        "under --runs-dir",
    )
    parser.add_argument("--runs-dir", default="runs", help="where --block looks for runs (default: runs)")
    parser.add_argument(
        "--protocol",
        default="paper",
        help=f"protocol preset ({', '.join(p for p in list_presets('glue') if p != 'tasks')}) or a YAML path",
    )
    parser.add_argument("--tasks", default="all", help="'all' or a comma list, e.g. cola,sst2,mnli")
    parser.add_argument("--seeds", help="comma list of seeds; default: the protocol's (1,2,3)")
    parser.add_argument(
        "--data-dir",
        help="local GLUE data: the hub's parquet layout (DIR/cola/train-*.parquet) "
        "or the GLUE TSV distribution (DIR/CoLA/train.tsv); default: the hub",
    )
    parser.add_argument("--force", action="store_true", help="redo task/seed pairs that already have results")
    parser.add_argument(
        "--show-inputs",
        type=int,
        metavar="N",
        help="print each task's first N training inputs as the model gets them (tokens, special tokens visible) "
        "and exit before any training",
    )
    parser.add_argument(
        "--save-models",
        action="store_true",
        help="also keep each fine-tuned model, as glue/<task>/seed<k>.model/ (a Hugging Face folder; "
        "`cramming-simple export --glue TASK` publishes one); a pair with a result but no model runs again",
    )
    parser.add_argument(
        "--at",
        type=float,
        metavar="FRACTION",
        help="fine-tune the snapshot kept at this budget fraction (model@0.50/, from impl.keep_at) instead of "
        "the final model; results go to glue@0.50/",
    )
    parser.add_argument(
        "--gpus", type=int, default=1, help="worker processes, one per GPU (on a machine without GPUs: CPU workers)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="protocol overrides, e.g. lr=1e-4 epochs=3; impl.tracker=tensorboard (or wandb, mlflow, a list) also "
        "sends every task's per-epoch metrics to that tracker",
    )


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from ..data.tokenizer import check_tokenizer, load_tokenizer
    from ..glue.config import load_protocol, protocol_hash
    from ..glue.data import check_counts, load_task, open_source, shown_inputs
    from ..glue.runner import Job, check_not_in_use, result_line, run_here, run_pool, write_summary
    from ..glue.score import results_table
    from ..glue.tasks import load_tasks
    from ..model import check_model
    from ..profiles import profile_of
    from ..runs import GLUE, MODEL, glue_name, snapshot_name
    from ..runtime import file_sha256, remove_stale_temporaries
    from ..tracking import Trackers, check_trackers

    if args.run_dir and "=" in args.run_dir and not Path(args.run_dir).exists():  # `glue --block sas lr=1e-4`
        args.overrides, args.run_dir = [args.run_dir, *args.overrides], None
    run_dir = resolve_run(args)
    # impl.tracker=... (as pretraining spells it) picks trackers; the other overrides are the protocol's
    chosen = OmegaConf.from_dotlist([o for o in args.overrides if o.startswith("impl.tracker=")])
    trackers = check_trackers(OmegaConf.to_container(chosen).get("impl", {}).get("tracker", "none"))
    args.overrides = [o for o in args.overrides if not o.startswith("impl.tracker=")]
    overrides = [*args.overrides, *([f"seeds=[{args.seeds}]"] if args.seeds else [])]
    name, protocol = load_protocol(args.protocol, overrides)
    table = load_tasks()
    tasks = table.select(args.tasks)
    require(args.gpus >= 1, f"--gpus must be at least 1, got {args.gpus}")

    # Everything that can be wrong is checked before the first step of any task: model, tokenizer, every
    # task's data, and that no other process is fine-tuning the same task/seed pairs.
    model_name = MODEL if args.at is None else snapshot_name(args.at)
    model_dir = run_dir / model_name
    if args.at is not None and not model_dir.is_dir():
        kept = sorted(p.name for p in run_dir.glob(f"{MODEL}@*") if p.is_dir())
        raise ConfigError(
            f"{run_dir} has no snapshot {model_name}/ (kept: {', '.join(kept) or 'none'}); snapshots are kept by "
            "pretraining with impl.keep_at=[0.25,0.5,0.75]"
        )
    arch, block = check_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    check_tokenizer(tokenizer, arch.vocab_size, where=f"the tokenizer in {model_dir}", pad_token_id=arch.pad_token_id)
    check_pretrained_tokenizer(run_dir, model_dir, tokenizer)
    first_task = protocol.warmup_task if protocol.warmup_from == "first_task" else None
    require(
        first_task is None or first_task in table.tasks,
        f"warmup_task must be a GLUE task ({', '.join(table.tasks)}), got {first_task!r}",
    )
    source = open_source(args.data_dir, table, [*tasks, *([first_task] if first_task not in (None, *tasks) else [])])
    for task in tasks:
        check_counts(task, load_task(source, task, table.tasks[task]), protocol)
    if args.show_inputs is not None:  # what the model is fed, then nothing else
        require(args.show_inputs > 0, f"--show-inputs needs a positive count, got {args.show_inputs}")
        for task in tasks:
            train = load_task(source, task, table.tasks[task])["train"]
            lines = shown_inputs(tokenizer, train, protocol, args.show_inputs)
            log.info(f"{task} ({protocol.single_text if len(train.texts) == 1 else 'pairs'}), first {len(lines)}:")
            log.info("\n".join(f"  {line}" for line in lines))
        return 0
    first_task_examples = None
    if first_task is not None:  # every task's warmup is this task's (the published runs' schedule)
        available = len(load_task(source, first_task, table.tasks[first_task])["train"])
        first_task_examples = min(available, protocol.max_train_examples or available)
    job = Job(
        run_dir,
        name,
        protocol,
        protocol_hash(protocol),
        file_sha256(model_dir / "model.safetensors")[:12],
        table,
        source,
        args.force,
        model_name,
        GLUE if args.at is None else glue_name(args.at),
        first_task_examples,
        args.save_models,
        overrides=tuple(args.overrides),
    )
    remove_stale_temporaries(job.glue_dir, recursive=True, dead_only=True)  # what killed GLUE writers left
    plan = [(t, s) for t in tasks for s in protocol.seeds]
    todo = [item for item in plan if args.force or not job.is_done(*item, warn=True)]
    check_not_in_use(job, todo)

    log.info(
        f"GLUE on {model_dir} ({block}): protocol {name} [{job.protocol_hash}, profile "
        f"{profile_of('glue', dataclasses.asdict(protocol))}], data from {source.describe()}, "
        f"results in {job.glue_dir}"
    )
    log.info(
        f"{len(todo)} of {len(plan)} task/seed runs to do"
        + (f" ({len(plan) - len(todo)} done before; --force redoes them)" if len(todo) < len(plan) else "")
    )

    tracked = Trackers(
        trackers, run_dir, run_dir.name, {"protocol": name, **dataclasses.asdict(protocol)}, job=job.glue_dir.name
    )

    def on_result(record: dict) -> None:
        log.info(result_line(record))
        write_summary(job, tasks, protocol.seeds)
        for epoch in record.get("epochs") or []:  # the per-epoch rows, to the trackers (this process only)
            metrics = {f"{split}/{k}": v for split, m in epoch["metrics"].items() for k, v in m.items()}
            tracked.log(
                {**epoch, **metrics}, epoch["epoch"], f"{job.glue_dir.name}/{record['task']}/seed{record['seed']}"
            )

    workers = min(args.gpus, len(todo))
    with tracked:
        errors = run_pool(job, todo, workers, on_result) if workers > 1 else run_here(job, todo, on_result)
    summary = write_summary(job, tasks, protocol.seeds)
    log.info(results_table(summary, tasks))
    for error in errors:
        log.error(error)
    return 1 if errors else 0


def check_pretrained_tokenizer(run_dir: Path, model_dir: Path, tokenizer) -> None:
    """The model folder's tokenizer must be the one pretraining read its data with (summary.json records its
    hash): another one would feed the model ids it never saw. Runs from before the record are not checked."""
    from ..data.tokenizer import tokenizer_sha256
    from ..runs import SUMMARY, read_summary

    summary = read_summary(run_dir) if (run_dir / SUMMARY).exists() else None
    recorded = ((summary or {}).get("data") or {}).get("tokenizer_sha256")
    if recorded and recorded != tokenizer_sha256(tokenizer):
        raise ConfigError(
            f"the tokenizer in {model_dir} is not the one {run_dir} was pretrained with (sha256 "
            f"{tokenizer_sha256(tokenizer)[:12]}, recorded {recorded[:12]}): restore that folder's tokenizer files"
        )


def resolve_run(args: argparse.Namespace) -> Path:
    from ..model import block_spec
    from ..runs import check_runs_dir, latest_run

    if args.block:
        require(args.run_dir is None, "give either RUN_DIR or --block, not both")
        return latest_run(check_runs_dir(args.runs_dir), block_spec(args.block).ref)
    require(args.run_dir is not None, "give a run folder (RUN_DIR) or --block NAME [--runs-dir DIR]")
    return Path(args.run_dir)
