"""The run folder contract: `runs/<name>/` and what lives in it. Reports, GLUE and tests depend on these names.

runs/<name>/
  config.yaml      resolved pretraining config (block, block_source, budget, arch, data, train, impl)
  metrics.jsonl    a row every few seconds: microbatch_steps, elapsed_s, p, lr, batch_size, loss, tokens_per_s, ...;
                   at each eval point a row {"kind": "eval", microbatch_steps, elapsed_s, p, eval_loss, eval_s}
  diagnostics.jsonl  at each eval point: microbatch_steps, elapsed_s, p, embedding and per-layer statistics
                   (model.diagnostics)
  summary.json     name, block, block_title, block_source, arch, budget_hours, params, microbatch_steps, tokens,
                   elapsed_s, final_loss, device, torch, world_size, data (source, name, hash, fingerprint,
                   tokenizer_sha256, cache), amendments, slurm (job id, partition, node, requeues; null outside
                   Slurm), completed, stop_reason, ...; written with every
                   checkpoint (which carries it too)
  checkpoint.pt    full training state for --resume
  checkpoint.prev.pt  the checkpoint before it: --resume falls back to it when checkpoint.pt is damaged
  .lock            held (flock) by the process pretraining in this folder; a second one exits with code 2
  model/           model.safetensors, config.json, modeling_cramming_simple.py, tokenizer files; block.py for a
                   user's block (its source). Also a Hugging Face model folder (docs/huggingface.md)
  model@<f>/       the model at budget fraction f (impl.keep_at), e.g. model@0.50
  glue/<task>/seed<k>.json, glue/summary.json
  glue/<task>/seed<k>.predictions.npz   per validation example: index, prediction, label (per split)
  glue/<task>/seed<k>.model/   the fine-tuned model (glue --save-models): a model/ folder with its head and labels
  glue@<f>/        the same for the snapshot model@<f> (glue --at f)
  glue/.locks/<task>-seed<k>.lock   held while a process fine-tunes that task/seed
  tb/              TensorBoard event files (impl.tracker=tensorboard): pretraining's train/ and eval/ rows, glue/...
  trackers.json    the W&B / MLflow run ids of this run (impl.tracker=wandb / mlflow), so a resume continues them
  logs/<job id>/   a sweep's Slurm jobs for this run (pretraining, its GLUE array's tasks `<id>_<k>`): submitit's
                   stdout and stderr (<job id>_<task>_log.out / .err; a requeued job appends to the same files);
                   an element of an array over several runs: a link to RUNS_DIR/.sweep/logs/<array>_<k>/
  logs/<time>-<job>.log   a local sweep's job (`sweep --launcher local`): its command line and its output
runs/.restarted/<name>-<time>/   folders `pretrain --restart` moved aside (never deleted; no report reads them)
runs/.sweep/<time>-<pid>.json    each launch of `sweep`: its arguments, jobs, Slurm ids, log files, and (locally)
                                 how each job ended; `sweep --status RUNS_DIR` reads them
runs/.calibration/<device>-<hash>.json   a reference budget's calibration (`sweep --reference`, `make REFERENCE=`):
                                 the Pre-LN rate of one kind of device at a budget's settings, shared by its runs
runs/report/                     a sweep's report (sweep --out)

The folder is the run: its name is the run's name, whatever the files in it say (a copy is adopted).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import ConfigError
from .errors import CorruptFileError
from .runtime import file_sha256, read_json

log = logging.getLogger(__name__)

CONFIG, METRICS, SUMMARY, CHECKPOINT, MODEL, GLUE = (
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "checkpoint.pt",
    "model",
    "glue",
)
PREV_CHECKPOINT, LOCK, DIAGNOSTICS = "checkpoint.prev.pt", ".lock", "diagnostics.jsonl"
CAPPED = ("max_steps", "max_microbatches")  # stop reasons of a run a train.* cap ended before its budget
COMPLETE = ("budget", *CAPPED)  # summary.json stop reasons of a finished run
RESTARTED = ".restarted"  # runs_dir/.restarted/<name>-<time>/: folders `pretrain --restart` moved aside
CALIBRATION_DIR = ".calibration"  # runs_dir/.calibration/: shared calibrations, one per kind of device and settings


def check_runs_dir(runs_dir: str | Path) -> Path:
    """`--runs-dir` as a folder (it may not exist yet); a file there is a mistake, named in one line."""
    path = Path(runs_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--runs-dir {runs_dir} is a file, not a folder of runs")
    return path


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / f).exists() for f in (CHECKPOINT, PREV_CHECKPOINT))


def snapshot_name(fraction: float) -> str:
    """model@0.50: the model kept at that fraction of the budget."""
    return f"{MODEL}@{fraction:.2f}"


def glue_name(fraction: float | None) -> str:
    """glue (the final model's results) or glue@0.50 (the snapshot's)."""
    return GLUE if fraction is None else f"{GLUE}@{fraction:.2f}"


# ----------------------------------------------------------------------------------------------- glue/

RESULTS = "*/seed*.json"  # every per-seed result of a glue/ folder


def glue_result(glue_dir: Path, task: str, seed: int) -> Path:
    """glue/<task>/seed<k>.json: one task/seed's result."""
    return glue_dir / task / f"seed{seed}.json"


def model_hash(model_dir: Path) -> str | None:
    """The model a GLUE result belongs to: the first 12 hex digits of its weights' sha256 (None: no model yet)."""
    weights = model_dir / "model.safetensors"
    return file_sha256(weights)[:12] if weights.exists() else None


def glue_result_is_of(result: dict | None, protocol_hash: str, model: str | None) -> bool:
    """What "this GLUE task/seed is done" means, for `glue` and the sweep's planner alike: a result of this
    protocol on this model. A model trained further (--extend-budget) has other weights: its GLUE is to do."""
    return (
        result is not None
        and model is not None
        and result.get("protocol_hash") == protocol_hash
        and result.get("model_hash") == model
    )


def glue_predictions(result: Path) -> Path:
    """glue/<task>/seed<k>.json -> glue/<task>/seed<k>.predictions.npz (per validation example)"""
    return result.with_name(f"{result.stem}.predictions.npz")


def glue_model(glue_dir: Path, task: str, seed: int) -> Path:
    """glue/<task>/seed<k>.model/: the fine-tuned model of a pair, when kept (a Hugging Face folder)."""
    return glue_dir / task / f"seed{seed}.model"


def glue_lock(glue_dir: Path, task: str, seed: int) -> Path:
    """glue/.locks/<task>-seed<k>.lock: held while a process fine-tunes that pair."""
    return glue_dir / ".locks" / f"{task}-seed{seed}.lock"


def kept_models(task_dir: Path) -> list[int]:
    """The seeds whose fine-tuned model a glue/<task>/ folder keeps."""
    return sorted(int(p.name.removesuffix(".model").removeprefix("seed")) for p in task_dir.glob("seed*.model"))


def task_seed(result: Path) -> tuple[str, int | None]:
    """glue/<task>/seed<k>.json -> (task, k)"""
    seed = result.stem.removeprefix("seed")
    return result.parent.name, int(seed) if seed.isdigit() else None


# ----------------------------------------------------------------------------------------------- runs


def find_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders under `runs_dir`, oldest first: those with a summary.json, and those a live process is training
    in before its first checkpoint (a config.yaml and a held lock)."""
    found = {p.parent for p in Path(runs_dir).glob(f"*/{SUMMARY}")}
    found |= {p.parent for p in Path(runs_dir).glob(f"*/{CONFIG}") if lock_held(p.parent / LOCK)}
    first = (SUMMARY, CONFIG)
    return sorted(found, key=lambda p: next((p / f).stat().st_mtime for f in first if (p / f).exists()))


def read_summary(run_dir: str | Path) -> dict | None:
    """A run's summary.json, or None (with a warning naming the file) when it is damaged."""
    try:
        return read_json(Path(run_dir) / SUMMARY)
    except CorruptFileError as err:
        log.warning(f"{err}; skipping that run's summary")
        return None


def run_state(run_dir: str | Path, summary: dict | None) -> str:
    """How a run stands: 'completed', 'running' (a live process holds its lock), its stop reason (preempted,
    nonfinite_loss, disk_full, ...), or 'killed' (not completed, no reason recorded, nobody training it)."""
    summary = summary or {}
    if summary.get("completed"):
        return "completed"
    if lock_held(Path(run_dir) / LOCK):
        return "running"
    return summary.get("stop_reason") or "killed"


def lock_held(path: Path) -> bool:
    """Whether a live process holds the flock on `path` (asked with a shared, non-blocking lock: never waits)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return False


def latest_run(runs_dir: str | Path, block: str) -> Path:
    """The most recent run of `block` that has a saved model (runs with a damaged summary.json are skipped)."""
    runs = [
        r
        for r in find_runs(runs_dir)
        if (read_summary(r) or {}).get("block") == block and (r / MODEL / "config.json").exists()
    ]
    if not runs:
        raise ConfigError(
            f"no pretrained run of block '{block}' under {runs_dir}/ (run `make pretrain BLOCK={block}` first)"
        )
    return runs[-1]
