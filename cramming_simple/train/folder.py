"""The run folder around a pretraining run: what it holds decides what may happen, one process owns it
(a flock on `.lock`), a copied or moved folder is adopted, `--restart` moves an old one aside, and a resume
finds the data it trained on or is refused before any work."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from ..config import ConfigError
from ..data import CACHE_ENV, prepared_path
from ..runs import CONFIG, DIAGNOSTICS, LOCK, METRICS, RESTARTED, SUMMARY, has_checkpoint, read_summary
from ..runtime import FileLock, atomic_write_bytes, node_local_locks, remove_stale_temporaries, write_json
from .config import PretrainConfig
from .distributed import Dist

log = logging.getLogger(__name__)


def check_folder(run_dir: Path, resume: bool) -> None:
    """What is in the folder decides what may happen: nothing (a new run), a checkpoint (--resume continues it),
    a finished run (returned), or the traces of a run killed before its first checkpoint (refused: --restart).
    A folder copied or moved here is adopted: its stored name becomes the folder's."""
    traces = [f for f in (CONFIG, METRICS, SUMMARY, DIAGNOSTICS) if (run_dir / f).exists()]
    restart = f"pass --restart to move it aside into {run_dir.parent / RESTARTED}/ and start over"
    if not resume and (traces or has_checkpoint(run_dir)):
        raise ConfigError(
            f"run folder {run_dir} already holds a run: pass --resume to continue it, --name to start another, or "
            + restart
        )
    summary = read_summary(run_dir) if (run_dir / SUMMARY).exists() else None
    if summary and summary.get("name") not in (None, run_dir.name):
        log.info(f"{run_dir} was copied or moved from a run named '{summary['name']}': it is now run '{run_dir.name}'")
        adopt(run_dir, summary)
    if not stopped_before_checkpoint(run_dir):
        return
    rows = len((run_dir / METRICS).read_text(errors="replace").splitlines()) if (run_dir / METRICS).exists() else 0
    raise ConfigError(
        f"{run_dir} holds a run stopped before its first checkpoint ({', '.join(traces)}; {rows} metrics rows) and "
        f"nothing to resume: {restart}"
    )


def stopped_before_checkpoint(run_dir: Path) -> list[str]:
    """The traces of a run that was killed before its first checkpoint (nothing to resume), or []."""
    traces = [f for f in (CONFIG, METRICS, SUMMARY, DIAGNOSTICS) if (run_dir / f).exists()]
    summary = read_summary(run_dir) if (run_dir / SUMMARY).exists() else None
    if summary and summary.get("completed") or has_checkpoint(run_dir):
        return []
    return traces


def adopt(run_dir: Path, summary: dict) -> None:
    """The folder's name becomes the run's stored name (summary.json and config.yaml)."""
    summary["name"] = run_dir.name
    write_json(run_dir / SUMMARY, summary)
    if (run_dir / CONFIG).exists():
        saved = OmegaConf.load(run_dir / CONFIG)
        saved.name = run_dir.name
        atomic_write_bytes(run_dir / CONFIG, OmegaConf.to_yaml(saved).encode())


def move_aside(run_dir: Path, dist: Dist, only_unresumable: bool = False) -> None:
    """--restart: the old folder goes to runs_dir/.restarted/<name>-<time>/ (under its lock: never a live run's).
    `only_unresumable` (--resume-or-restart): only a folder of a run killed before its first checkpoint, which
    --resume cannot continue (a node failure, an OOM kill or a SIGKILL in its first checkpoint interval)."""
    if dist.main and run_dir.exists():
        with FileLock(run_dir / LOCK, f"run folder {run_dir}", purpose="cramming-simple pretrain --restart"):
            traces = stopped_before_checkpoint(run_dir) if only_unresumable else ["the folder"]
            if traces:
                if only_unresumable:
                    log.warning(
                        f"{run_dir} holds a run stopped before its first checkpoint ({', '.join(traces)}): "
                        "--resume-or-restart moves it aside and starts the run over"
                    )
                aside = run_dir.parent / RESTARTED / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(parents=True, exist_ok=True)
                os.rename(run_dir, aside)
                log.info(f"moved the old {run_dir} aside to {aside}")
    dist.barrier()


@contextlib.contextmanager
def run_lock(run_dir: Path, dist: Dist, mode: str = "flock"):
    """Rank 0 holds `run_dir/.lock` for the whole run; every rank learns whether it got it (a second start
    exits within seconds, before data preparation). Temporary files that killed writers left are removed.
    A folder whose filesystem keeps locks per node is refused (one line, the way out: impl.lock=none);
    `mode` "none": no lock, the scheduler keeps a second process out, and only this host's dead writers' files
    are removed."""
    if mode == "none":
        if dist.main:
            log.warning(f"impl.lock=none: nothing but the scheduler keeps a second process out of {run_dir}")
            remove_stale_temporaries(run_dir, dead_only=True)
        yield
        return
    lock = FileLock(
        run_dir / LOCK,
        f"run folder {run_dir}",
        purpose="cramming-simple pretrain",
        advice="wait for it to finish, stop it (SIGTERM writes a checkpoint), or pass --name to start another run",
    )
    error = None
    if dist.main:
        try:
            check_lock_scope(run_dir)
            lock.acquire()
        except Exception as err:  # noqa: BLE001 - raised on every rank by fail_together
            error = err
    dist.fail_together(error)
    try:
        if dist.main:
            remove_stale_temporaries(run_dir)
        yield
    finally:
        lock.release()


def check_lock_scope(run_dir: Path) -> None:
    local = node_local_locks(run_dir)
    if local:
        raise ConfigError(
            f"run folder {run_dir} is on {local}: a lock there does not keep out a process on another node. Pass "
            "impl.lock=none to leave that to the scheduler (a sweep then runs each job as a Slurm singleton), or "
            "keep the runs on a filesystem with cluster-wide locks (README, On a cluster)"
        )


def check_data_at_hand(cfg: PretrainConfig, run_dir: Path) -> None:
    """A resumed run whose prepared data is not in the cache would prepare it again. A trained tokenizer does
    not come out the same twice (tokenizers breaks ties differently), so that is refused, naming where the data
    was looked for; a pre-tokenised upload comes out the same (checked against the record after preparing)."""
    path = prepared_path(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len)
    if cfg.data.source == "hub-pretokenized" or path.exists():
        return
    recorded = (read_summary(run_dir) or {}).get("data") if (run_dir / SUMMARY).exists() else None
    raise ConfigError(
        f"cannot resume {run_dir}: its prepared data {path.name} is not in {path.parent}, and preparing it again "
        f"would train a new tokenizer (other token ids). Point data.cache_dir (or {CACHE_ENV}) at the cache the "
        f"run used{cache_hint(recorded)}"
    )


def cache_hint(recorded: dict | None) -> str:
    cache = (recorded or {}).get("cache")
    return f" ({cache})" if cache else " (older runs prepared it in ./data of the folder they were started in)"
