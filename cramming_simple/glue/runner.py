"""Running GLUE task/seed pairs: one after another in this process, or spread over worker processes (one per
GPU; CPU workers on a machine without one), writing the same result files either way.

Results live in RUN_DIR/glue/<task>/seed<k>.json, one per pair (see `glue.score` for the format), with the
per-example validation predictions beside it (seed<k>.predictions.npz, written first), and
RUN_DIR/glue/summary.json, rewritten after every pair. A snapshot's (`--at 0.5`: model@0.50/) go to
glue@0.50/. Each pair is locked while it trains (`glue/.locks/<task>-seed<k>.lock`), so two processes never
train the same pair; a pair another process finished in the meantime is not trained again.
"""

from __future__ import annotations

import io
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import require
from ..console import setup_logging
from ..data.tokenizer import load_tokenizer
from ..errors import CorruptFileError, LockedError, UserError
from ..runs import GLUE, glue_lock, glue_model, glue_predictions, glue_result, glue_result_is_of
from ..runtime import (
    FileLock,
    Progress,
    atomic_write_bytes,
    die_with_parent,
    environment,
    now_iso,
    pick_device,
    read_json,
    write_json,
)
from .config import GlueRun, protocol_values
from .data import Source, TaskData, load_task, prepare
from .finetune import finetune
from .score import run_summary

log = logging.getLogger(__name__)

Item = tuple[str, int]  # (task, seed)


@dataclass(frozen=True)
class Job(GlueRun):
    """A GlueRun with what `run(config)` found out before any training: everything needed to run task/seed pairs;
    picklable for spawned workers."""

    source: Source | None = None
    protocol_hash: str = ""
    model_hash: str = ""
    first_task_examples: int | None = None  # warmup_from=first_task: training examples of the protocol's warmup_task

    @classmethod
    def of(cls, config: GlueRun, source: Source, protocol_hash: str, model_hash: str, examples: int | None) -> Job:
        given = {f.name: getattr(config, f.name) for f in fields(GlueRun)}
        return cls(
            **given, source=source, protocol_hash=protocol_hash, model_hash=model_hash, first_task_examples=examples
        )

    def result_path(self, task: str, seed: int) -> Path:
        return glue_result(self.glue_dir, task, seed)

    def saved_model(self, task: str, seed: int) -> Path:
        """glue/<task>/seed<k>.model/: the fine-tuned model of a pair, when kept (a Hugging Face folder)."""
        return glue_model(self.glue_dir, task, seed)

    def invocation(self) -> dict:
        """What the glue command line said: the protocol, the data folder and the overrides."""
        return {
            "protocol": self.protocol_name,
            "data_dir": str(self.source.root.resolve()) if self.source.root is not None else None,
            "overrides": list(self.overrides),
            "at": None if self.glue_name == GLUE else self.glue_name.split("@", 1)[1],
            "save_models": self.save_models,
        }

    def lock(self, task: str, seed: int) -> FileLock:
        """Held while a process fine-tunes this task/seed: two processes never train the same pair."""
        return FileLock(
            glue_lock(self.glue_dir, task, seed),
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
                log.warning(f"{err}; that task/seed is run again")
            return None

    def is_done(self, task: str, seed: int, warn: bool = False) -> bool:
        """A result (ok, or failed with a non-finite loss) of this protocol on this model exists (and, when models
        are kept, the pair's model: an ok result without one runs again)."""
        result = self.read_result(task, seed, warn)
        wants_model = self.save_models and result is not None and result.get("status") == "ok"
        return self.is_ours(result) and not (wants_model and not self.saved_model(task, seed).is_dir())

    def is_ours(self, result: dict | None) -> bool:
        """Whether a stored result is of this protocol on this model."""
        return glue_result_is_of(result, self.protocol_hash, self.model_hash)


def check_not_in_use(job: Job, todo: list[Item]) -> None:
    """Fail (exit code 2) before any training when another live process is fine-tuning a pair to do."""
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


# ----------------------------------------------------------------------------------------------- one pair


class Worker:
    """Runs pairs on one device, keeping the last task's tokenised data for its next seed."""

    def __init__(self, device: torch.device, parent: int | None = None):
        self.device, self.parent = device, parent
        self.loaded: tuple[str | None, TaskData | None] = (None, None)

    @classmethod
    def in_process(cls, k: int, device: str | None, workers: int, parent: int, logs: Path, level: int) -> Worker:
        """A pool process starts: pin its GPU before torch sees the others, die with the parent, log to a file at
        the parent's level (a spawned process imports the package, which configures no logging itself)."""
        # A worker must not outlive its parent: it would go on taking pairs (duplicating a rerun's work) and hold
        # its GPU. Linux kills it with the parent; elsewhere `Worker.run` checks the parent before every pair.
        die_with_parent(signal.SIGKILL, parent)
        if device is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = device
        elif not torch.cuda.is_available():  # CPU workers share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
        sys.stdout = sys.stderr = open(logs / f"worker{k}.log", "a", buffering=1)
        setup_logging(-1 if level >= logging.WARNING else 1 if level <= logging.DEBUG else 0)
        return cls(pick_device("auto"), parent)

    def run(self, job: Job, task: str, seed: int) -> tuple[str, dict | str]:
        """("result", record) or ("error", message). A non-finite loss is a result (status "failed"); an
        exception is an error, with its traceback unless it is a user error."""
        if self.parent is not None and os.getppid() != self.parent:  # our parent is gone: take no more work
            os._exit(1)
        try:
            with job.lock(task, seed):
                if not job.force and job.is_done(task, seed):  # done by another process since the plan was made
                    return "result", read_json(job.result_path(task, seed))
                if self.loaded[0] != task:  # tokenise each task once for all its seeds
                    self.loaded = (None, None)  # free the previous task's device copy first
                    splits = load_task(job.source, task, job.table.tasks[task])
                    self.loaded = (
                        task,
                        prepare(splits, load_tokenizer(job.model_dir), job.protocol, self.device, task),
                    )
                return "result", run_pair(job, task, seed, self.loaded[1], self.device)
        except UserError as err:
            return "error", str(err)
        except Exception:  # noqa: BLE001
            return "error", traceback.format_exc()


def run_pair(job: Job, task: str, seed: int, data: TaskData, device: torch.device) -> dict:
    """Fine-tune and score one pair; write its result file (a result of another protocol or model is kept aside)."""
    started = now_iso()
    result = finetune(
        job.model_dir,
        task,
        job.table.tasks[task],
        job.protocol,
        seed,
        data,
        device,
        first_task_examples=job.first_task_examples,
        save_to=job.saved_model(task, seed) if job.save_models else None,
    )
    per_example = result.pop("predictions")
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
        "invocation": job.invocation(),  # how to run it again (the model card's glue command)
        "environment": environment(device),
        "started_at": started,
        "finished_at": now_iso(),
    }
    path = job.result_path(task, seed)
    old = job.read_result(task, seed)
    if old is not None and not job.is_ours(old):
        aside = path.parent / "previous" / f"{path.stem}-{old.get('protocol_hash')}-{old.get('model_hash')}.json"
        aside.parent.mkdir(exist_ok=True)
        path.replace(aside)
        if predictions_path(path).exists():
            predictions_path(path).replace(predictions_path(aside))
    path.parent.mkdir(parents=True, exist_ok=True)
    if per_example:  # before the result: a result file always has its predictions beside it
        buffer = io.BytesIO()
        np.savez(buffer, **{f"{split}.{k}": v for split, arrays in per_example.items() for k, v in arrays.items()})
        atomic_write_bytes(predictions_path(path), buffer.getvalue())
    write_json(path, record)
    return record


def predictions_path(result: Path) -> Path:
    """glue/<task>/seed<k>.json -> glue/<task>/seed<k>.predictions.npz (runs.glue_predictions)"""
    return glue_predictions(result)


def read_predictions(result: Path) -> dict[str, dict[str, np.ndarray]] | None:
    """{split: {"index", "prediction", "label"}} saved beside a result, or None (none saved: an older run)."""
    path = predictions_path(result)
    if not path.exists():
        return None
    try:
        with np.load(path) as npz:
            out: dict[str, dict[str, np.ndarray]] = {}
            for key in npz.files:
                split, name = key.rsplit(".", 1)
                out.setdefault(split, {})[name] = npz[key]
            return out
    except (OSError, ValueError, KeyError) as err:
        raise CorruptFileError(path, f"cannot be read ({type(err).__name__}: {err})") from None


# ----------------------------------------------------------------------------------------------- many pairs

OnResult = Callable[[dict], None]


def run_here(job: Job, todo: list[Item], on_result: OnResult) -> list[str]:
    """Every pair in this process, in order; returns the errors."""
    worker, errors = Worker(pick_device("auto")), []
    for task, seed in todo:
        kind, payload = worker.run(job, task, seed)
        if kind == "result":
            on_result(payload)
        else:
            errors.append(f"{task} seed {seed}: {payload}")
    return errors


def run_pool(job: Job, todo: list[Item], workers: int, on_result: OnResult) -> list[str]:
    """Spread pairs over `workers` spawned processes, one per GPU (CPU workers where there is none).

    Pairs go out in the table's order (long tasks first); each worker's output goes to
    RUN_DIR/glue/logs/worker<k>.log. Workers die with this process (they never go on taking pairs alone).
    """
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count())))).split(
            ","
        )
        require(workers <= len(visible), f"--gpus {workers} but only {len(visible)} GPU(s) visible")
        devices: list[str | None] = visible[:workers]
    else:
        log.info(f"no GPU: running {workers} CPU worker processes")
        devices = [None] * workers
    logs = job.glue_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    pairs, results = ctx.Queue(), ctx.Queue()
    for item in [*todo, *[None] * workers]:  # the pairs, then one stop for each worker
        pairs.put(item)
    level = log.getEffectiveLevel()
    processes = [
        ctx.Process(target=serve, args=(k, device, workers, os.getpid(), logs, level, job, pairs, results))
        for k, device in enumerate(devices)
    ]
    for process in processes:
        process.start()
    try:
        return collect(todo, processes, results, on_result, logs)
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


def collect(todo: list[Item], processes: list, results, on_result: OnResult, logs: Path) -> list[str]:
    """The workers' messages until every pair is accounted for: a result, an error, or a worker that died on it
    (the other workers go on with the rest; when none is left, the rest is not run)."""
    errors: list[str] = []
    on: dict[int, Item] = {}  # worker -> the pair it is working on
    left = set(todo)
    progress = Progress(len(todo), "GLUE", unit="run")
    while left:
        try:
            k, kind, task, seed, payload = results.get(timeout=1.0)
        except queue.Empty:
            died = [k for k, process in enumerate(processes) if not process.is_alive()]
            lost = [on.pop(k) for k in died if k in on]
            if len(died) == len(processes):
                lost = sorted(left, key=todo.index)  # nobody is left to take them
            for task, seed in lost:
                errors.append(f"{task} seed {seed}: not run, its worker died (see {logs})")
                left.discard((task, seed))
            progress.update(len(todo) - len(left))
            continue
        if kind == "start":
            on[k] = (task, seed)
            continue
        on.pop(k, None)
        left.discard((task, seed))
        if kind == "result":
            on_result(payload)
        else:
            errors.append(f"{task} seed {seed}: {payload}")
        progress.update(len(todo) - len(left))
    progress.close()
    return errors


def serve(k: int, device: str | None, workers: int, parent: int, logs: Path, level: int, job: Job, pairs, results):
    """A worker process: its `Worker` lives here, for the process's life; it takes pairs until told to stop and
    says which pair it starts (so that a worker that dies on one is known) and how each ended."""
    worker = Worker.in_process(k, device, workers, parent, logs, level)
    while (item := pairs.get()) is not None:
        task, seed = item
        results.put((k, "start", task, seed, None))
        kind, payload = worker.run(job, task, seed)
        results.put((k, kind, task, seed, payload))


# ----------------------------------------------------------------------------------------------- results


def write_summary(job: Job, tasks: list[str], seeds: list[int]) -> dict:
    """glue/summary.json from every result on disk (glue.score.run_summary), the requested pairs expected too:
    a rerun of one task keeps the others' numbers in it."""
    summary = run_summary(job.run_dir, job.glue_name, unreadable=[], tasks=tasks, seeds=seeds)  # damaged: warned
    write_json(job.glue_dir / "summary.json", summary)
    return summary


def result_line(record: dict) -> str:
    head = f"{record['task']} seed {record['seed']}"
    if record["status"] != "ok":
        return f"{head}: FAILED, {record['reason']}"
    scores = ", ".join(
        f"{split} {name} {100 * v:.1f}" for split, values in record["metrics"].items() for name, v in values.items()
    )
    return f"{head}: {scores} ({record['train_time_s']:.0f}s training)"
