"""Fine-tune a pretrained run on GLUE under a fixed protocol (SPEC section 4) and score it.

Results go to RUN_DIR/glue/<task>/seed<k>.json, one per task and seed, and RUN_DIR/glue/summary.json (the
nine GLUE columns and their average, mean +- std over seeds), rewritten after every task/seed. A rerun skips
the task/seed pairs already done with the same protocol and model; --force redoes them.

examples:
  cramming-simple glue runs/sas-24h
  cramming-simple glue --block sas --runs-dir runs --protocol cramming --tasks rte,mrpc --seeds 1 lr=2e-5
  cramming-simple glue runs/tiny-smoke --protocol smoke --data-dir ~/glue_data --gpus 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
from tqdm import tqdm

from ..config import list_presets, require
from ..data.tokenizer import check_tokenizer, load_tokenizer
from ..errors import CorruptFileError, LockedError, UserError
from ..model import check_model
from ..runs import GLUE, MODEL, latest_run
from ..runtime import FileLock, Progress, die_with_parent, environment, file_sha256, now_iso, pick_device, read_json, write_json
from .config import Protocol, TaskTable, load_protocol, load_tasks, protocol_hash, protocol_values
from .data import Source, check_counts, load_task, open_source, prepare
from .finetune import finetune
from .score import COLUMNS, format_mean_std, load_results, summarize

Item = tuple[str, int]  # (task, seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run folder with model/ in it (or use --block)")
    parser.add_argument("--block", help="instead of RUN_DIR: the latest run of this block under --runs-dir")
    parser.add_argument("--runs-dir", default="runs", help="where --block looks for runs (default: runs)")
    parser.add_argument("--protocol", default="paper", help=f"protocol preset ({', '.join(p for p in list_presets('glue') if p != 'tasks')}) or a YAML path")
    parser.add_argument("--tasks", default="all", help="'all' or a comma list, e.g. cola,sst2,mnli")
    parser.add_argument("--seeds", help="comma list of seeds; default: the protocol's (1,2,3)")
    parser.add_argument("--data-dir", help="local GLUE data: the hub's parquet layout (DIR/cola/train-*.parquet) or the GLUE TSV distribution (DIR/CoLA/train.tsv); default: the hub")
    parser.add_argument("--force", action="store_true", help="redo task/seed pairs that already have results")
    parser.add_argument("--gpus", type=int, default=1, help="worker processes, one per GPU (on a machine without GPUs: CPU workers)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="protocol overrides, e.g. lr=1e-4 epochs=3")


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to run task/seed pairs; picklable for spawned workers."""

    run_dir: Path
    protocol_name: str
    protocol: Protocol
    protocol_hash: str
    model_hash: str
    table: TaskTable
    source: Source
    force: bool = False  # redo pairs that already have a result

    def result_path(self, task: str, seed: int) -> Path:
        return self.run_dir / GLUE / task / f"seed{seed}.json"

    def lock(self, task: str, seed: int) -> FileLock:
        """Held while a process fine-tunes this task/seed: two processes never train the same pair."""
        return FileLock(
            self.run_dir / GLUE / ".locks" / f"{task}-seed{seed}.lock",
            f"GLUE {task} seed {seed} of {self.run_dir}",
            purpose="cramming-simple glue",
            advice="wait for it to finish, or leave that task/seed out (--tasks, --seeds)",
        )

    def read_result(self, task: str, seed: int, warn: bool = False) -> dict | None:
        """The stored result of a task/seed, or None (none yet, or a damaged file that a new run replaces)."""
        path = self.result_path(task, seed)
        if not path.exists():
            return None
        try:
            return read_json(path)
        except CorruptFileError as err:
            if warn:
                print(f"warning: {err}; that task/seed is run again", file=sys.stderr)
            return None

    def is_done(self, task: str, seed: int, warn: bool = False) -> bool:
        """A result (ok, or failed with a non-finite loss) of this protocol on this model exists."""
        old = self.read_result(task, seed, warn)
        return old is not None and old.get("protocol_hash") == self.protocol_hash and old.get("model_hash") == self.model_hash


def run(args: argparse.Namespace) -> int:
    if args.run_dir and "=" in args.run_dir and not Path(args.run_dir).exists():  # `glue --block sas lr=1e-4`
        args.overrides, args.run_dir = [args.run_dir, *args.overrides], None
    run_dir = resolve_run(args)
    overrides = [*args.overrides, *([f"seeds=[{args.seeds}]"] if args.seeds else [])]
    name, protocol = load_protocol(args.protocol, overrides)
    table = load_tasks()
    tasks = parse_tasks(args.tasks, table)
    require(args.gpus >= 1, f"--gpus must be at least 1, got {args.gpus}")

    # Everything that can be wrong is checked before the first step of any task: model, tokenizer, every
    # task's data, and that no other process is fine-tuning the same task/seed pairs.
    model_dir = run_dir / MODEL
    arch, block = check_model(model_dir)
    check_tokenizer(load_tokenizer(model_dir), arch.vocab_size, where=f"the tokenizer in {model_dir}")
    source = open_source(args.data_dir, table, tasks)
    for task in tasks:
        check_counts(task, load_task(source, task, table.tasks[task]), protocol)
    job = Job(run_dir, name, protocol, protocol_hash(protocol), file_sha256(model_dir / "model.safetensors")[:12], table, source, args.force)

    plan = [(t, s) for t in tasks for s in protocol.seeds]
    todo = [item for item in plan if args.force or not job.is_done(*item, warn=True)]
    check_not_in_use(job, todo)
    print(f"GLUE on {run_dir} ({block}): protocol {name} [{job.protocol_hash}], data from {source.describe()}")
    print(f"{len(todo)} of {len(plan)} task/seed runs to do" + (f" ({len(plan) - len(todo)} done before; --force redoes them)" if len(todo) < len(plan) else ""))

    def on_result(record: dict) -> None:
        tqdm.write(result_line(record))
        write_summary(job, tasks, protocol.seeds)

    workers = min(args.gpus, len(todo))
    if workers > 1:
        errors = run_workers(job, todo, workers, on_result)
    else:
        errors = []
        work(job, todo, pick_device("auto"), on_result, on_error=lambda task, seed, error: errors.append(f"{task} seed {seed}: {error}"))
    summary = write_summary(job, tasks, protocol.seeds)
    print(results_table(summary, tasks))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def resolve_run(args: argparse.Namespace) -> Path:
    if args.block:
        require(args.run_dir is None, "give either RUN_DIR or --block, not both")
        return latest_run(args.runs_dir, args.block)
    require(args.run_dir is not None, "give a run folder (RUN_DIR) or --block NAME [--runs-dir DIR]")
    return Path(args.run_dir)


def parse_tasks(value: str, table: TaskTable) -> list[str]:
    """'all' or a comma list -> task names in the table's order (largest first)."""
    if value == "all":
        return list(table.tasks)
    wanted = [t.strip().lower() for t in value.split(",") if t.strip()]
    unknown = sorted(set(wanted) - set(table.tasks))
    require(bool(wanted) and not unknown, f"unknown GLUE task(s) {unknown or value!r}. Valid: all, {', '.join(table.tasks)}")
    return [t for t in table.tasks if t in wanted]


# ----------------------------------------------------------------------------------------------- running


def check_not_in_use(job: Job, todo: list[Item]) -> None:
    """Exit (code 2) before any training when another live process is fine-tuning one of the pairs to do."""
    busy: list[LockedError] = []
    for task, seed in todo:
        lock = job.lock(task, seed)
        try:
            lock.acquire()
        except LockedError as err:
            busy.append(err)
        else:
            lock.release()
    if busy:
        more = f" (and {len(busy) - 1} more task/seed pair(s))" if len(busy) > 1 else ""
        raise LockedError(f"{busy[0]}{more}")


def work(
    job: Job, items: Iterable[Item], device: torch.device, on_result: Callable[[dict], None], on_error: Callable[[str, int, str], None], parent: int | None = None
) -> None:
    """Run task/seed pairs one after another on `device`. A run that fails (non-finite loss) is a result;
    an exception is an error, reported (with its traceback unless it is a user error), and the next pair goes on.

    Each pair is locked while it trains; a pair that another process finished meanwhile is not trained again.
    `parent`: stop when that process (the one that started this worker) is gone.
    """
    tokenizer = load_tokenizer(job.run_dir / MODEL)
    loaded = (None, None)
    for task, seed in items:
        if parent is not None and os.getppid() != parent:
            return
        try:
            with job.lock(task, seed):
                if not job.force and job.is_done(task, seed):  # done by another process since the plan was made
                    on_result(read_json(job.result_path(task, seed)))
                    continue
                if loaded[0] != task:  # tokenise each task once for all its seeds
                    loaded = (None, None)  # free the previous task's device copy first
                    loaded = (task, prepare(load_task(job.source, task, job.table.tasks[task]), tokenizer, job.protocol, device, task))
                on_result(run_one(job, task, seed, loaded[1], device))
        except UserError as err:
            on_error(task, seed, str(err))
        except Exception:  # noqa: BLE001
            on_error(task, seed, traceback.format_exc())


def run_one(job: Job, task: str, seed: int, data, device: torch.device) -> dict:
    started = now_iso()
    result = finetune(job.run_dir / MODEL, task, job.table.tasks[task], job.protocol, seed, data, device)
    record = {
        "task": task,
        "seed": seed,
        "protocol": job.protocol_name,
        "protocol_hash": job.protocol_hash,
        **result,
        "examples": data.examples,
        "train_available": data.train_available,
        "model_hash": job.model_hash,
        "config": protocol_values(job.protocol),
        "environment": environment(device),
        "started_at": started,
        "finished_at": now_iso(),
    }
    path = job.result_path(task, seed)
    old = job.read_result(task, seed)
    if old is not None and not job.is_done(task, seed):  # a result of another protocol or model: keep it
        aside = path.parent / "previous" / f"{path.stem}-{old.get('protocol_hash')}-{old.get('model_hash')}.json"
        aside.parent.mkdir(exist_ok=True)
        path.replace(aside)
    write_json(path, record)
    return record


def run_workers(job: Job, todo: list[Item], workers: int, on_result: Callable[[dict], None]) -> list[str]:
    """Spread task/seed pairs over `workers` spawned processes, one per GPU (CPU workers where there is none).

    Workers take pairs from a shared queue (long tasks first, see glue/tasks.yaml) and write the same result
    files as a single process; their output goes to RUN_DIR/glue/logs/worker<k>.log.
    """
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count())))).split(",")
        require(workers <= len(visible), f"--gpus {workers} but only {len(visible)} GPU(s) visible")
        devices: list[str | None] = visible[:workers]
    else:
        print(f"no GPU: running {workers} CPU worker processes")
        devices = [None] * workers
    logs = job.run_dir / GLUE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    tasks_q, results_q = ctx.Queue(), ctx.Queue()
    for item in [*todo, *[None] * workers]:
        tasks_q.put(item)
    args = (workers, job, tasks_q, results_q, os.getpid())
    procs = [ctx.Process(target=_worker, args=(*args, logs / f"worker{k}.log"), name=f"glue-worker{k}") for k in range(workers)]
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:  # a spawned process inherits the environment at start: its one GPU is set before torch can see others
        for p, device in zip(procs, devices):
            if device is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = device
            p.start()
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved

    pending, errors = set(todo), []  # errors: exceptions and dead workers (a non-finite loss is a result)
    progress = Progress(len(todo), "GLUE", unit="run")
    while pending:
        try:
            kind, task, seed, payload = results_q.get(timeout=1.0)
        except queue.Empty:
            if any(p.is_alive() for p in procs):
                continue
            try:  # every worker has exited: read what they sent last, then stop waiting
                kind, task, seed, payload = results_q.get(timeout=1.0)
            except queue.Empty:
                break
        pending.discard((task, seed))
        if kind == "result":
            on_result(payload)
        else:
            errors.append(f"{task} seed {seed}: {payload}")
        progress.update(len(todo) - len(pending))
    progress.close()
    for k, p in enumerate(procs):
        p.join()
        if p.exitcode != 0:
            errors.append(f"worker {k} exited with code {p.exitcode} (see {logs / f'worker{k}.log'})")
    errors += [f"{t} seed {s}: not run, its worker died" for t, s in sorted(pending)]
    return errors


def _worker(workers: int, job: Job, tasks_q, results_q, parent: int, log_path: Path) -> None:
    # A worker must not outlive its parent: it would go on taking task/seed pairs (duplicating a rerun's work)
    # and hold its GPU. Linux kills it with the parent; elsewhere `work` checks the parent between pairs.
    die_with_parent(signal.SIGKILL, parent)
    if not torch.cuda.is_available():  # CPU workers share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    sys.stdout = sys.stderr = open(log_path, "a", buffering=1)
    work(
        job,
        iter(tasks_q.get, None),
        pick_device("auto"),
        on_result=lambda record: results_q.put(("result", record["task"], record["seed"], record)),
        on_error=lambda task, seed, error: results_q.put(("error", task, seed, error)),
        parent=parent,
    )


# ----------------------------------------------------------------------------------------------- results


def write_summary(job: Job, tasks: list[str], seeds: list[int]) -> dict:
    """glue/summary.json over the requested tasks and seeds, from results of this protocol on this model only."""
    results = [
        r for r in load_results(job.run_dir, unreadable=[])  # damaged files: warned about when planning
        if r["task"] in tasks and r["seed"] in seeds and r.get("protocol_hash") == job.protocol_hash and r.get("model_hash") == job.model_hash
    ]
    summary = summarize(results, tasks, seeds)
    write_json(job.run_dir / GLUE / "summary.json", summary)
    return summary


def result_line(record: dict) -> str:
    head = f"{record['task']} seed {record['seed']}"
    if record["status"] != "ok":
        return f"{head}: FAILED, {record['reason']}"
    scores = ", ".join(f"{split} {name} {100 * v:.1f}" for split, values in record["metrics"].items() for name, v in values.items())
    return f"{head}: {scores} ({record['train_time_s']:.0f}s training)"


def results_table(summary: dict, tasks: list[str]) -> str:
    """The requested tasks' GLUE columns (mean +- std over seeds, percent) and the GLUE average."""
    rows = []
    for c in COLUMNS:
        if c.task in tasks:
            col = summary["columns"][c.label]
            score = format_mean_std(col)
            rows.append({"column": c.label, "metric": c.metric, "score": score, "seeds": col["n"]})
    average = summary["glue_average"]
    tail = f"GLUE average: {format_mean_std(average)} ({average['n']} seeds)" if average else f"GLUE average: missing ({summary['average_missing_reason']})"
    return f"{pd.DataFrame(rows).to_string(index=False)}\n{tail}"
