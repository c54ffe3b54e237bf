"""Experiment trackers: the rows that go to metrics.jsonl (and GLUE's per-epoch results) also go to TensorBoard,
Weights & Biases or MLflow, chosen with `impl.tracker=tensorboard` (or a list: `impl.tracker=[tensorboard,wandb]`).

- Only the process that writes metrics.jsonl (rank 0; GLUE's main process) logs.
- A tracker's package is imported only when it is chosen; a missing one fails at the start of the command with
  the `pip install` line.
- The resolved config goes in as hyperparameters, under the run's name.
- TensorBoard writes event files to runs/<name>/tb/.
- W&B and MLflow keep their run's id in runs/<name>/trackers.json. A resumed run, or a second `glue`, therefore
  continues the same tracker run (W&B: `resume="allow"`; MLflow: `start_run(run_id=...)`).
- W&B follows its own environment: `WANDB_MODE=offline` works without a network, and `WANDB_PROJECT` names the
  project (default: cramming-simple).
- MLflow follows `MLFLOW_TRACKING_URI` (default: ./mlruns).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from .config import ConfigError
from .runtime import atomic_write_bytes

TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # tracker -> package and extra
TB_DIR, IDS = "tb", "trackers.json"


def tracker_names(value: Any) -> list[str]:
    """impl.tracker as a list of tracker names ('none' and duplicates removed); unknown names fail."""
    names = [value] if isinstance(value, str) else list(value or [])
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"impl.tracker: unknown tracker(s) {unknown}. Valid: {', '.join(TRACKERS)} (or a list)")
    return [n for n in dict.fromkeys(names) if n != "none"]


def check_trackers(value: Any) -> list[str]:
    """The chosen trackers, each one's package importable; a missing one fails here with the line to install it."""
    names = tracker_names(value)
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(
                f"impl.tracker={name} needs the '{PACKAGES[name]}' package, which is not installed: "
                f"pip install 'cramming-simple[{name}]' (or pip install {PACKAGES[name]})"
            )
    return names


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a metrics row, named `prefix/key` (steps and the row's kind are not metrics)."""
    skip = {"kind", "microbatch_steps", "epoch"}  # the step, not a metric
    out = {}
    for key, value in row.items():
        if key in skip or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[f"{prefix}/{key}" if prefix else key] = float(value)
    return out


class Trackers:
    """The chosen trackers as one: `log(row, step, prefix)`, `close()`. No trackers: every call does nothing."""

    def __init__(
        self,
        names: list[str],
        run_dir: Path,
        run_name: str,
        config: dict,
        job: str = "pretrain",
        resume_step: int | None = None,
    ):
        """resume_step: a resumed run's step; what a tracker holds from that step on was logged by work that is
        redone now (TensorBoard purges it; W&B and MLflow take the redone steps' values as new points)."""
        self.run_dir, self.sinks = Path(run_dir), []
        ids = self._ids()
        for name in names:
            sink = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}[name]
            self.sinks.append(sink(self.run_dir, run_name, config, job, ids.get(f"{name}:{job}"), resume_step))
        new = {f"{name}:{job}": s.run_id for name, s in zip(names, self.sinks) if s.run_id}
        if new and any(ids.get(k) != v for k, v in new.items()):
            atomic_write_bytes(self.run_dir / IDS, (json.dumps({**ids, **new}, indent=2) + "\n").encode())

    def _ids(self) -> dict:
        try:
            return json.loads((self.run_dir / IDS).read_text())
        except (OSError, ValueError):
            return {}

    def log(self, row: dict, step: int, prefix: str = "") -> None:
        values = scalars(row, prefix)
        if values:
            for sink in self.sinks:
                sink.log(values, step)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def config_text(config: dict) -> str:
    return "```json\n" + json.dumps(config, indent=2, default=str) + "\n```"


def flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}: the form MLflow's parameters take."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flat(value, f"{name}.")
        else:
            out[name] = value
    return out


class _TensorBoard:
    run_id = None

    def __init__(self, run_dir: Path, run_name: str, config: dict, job: str, run_id: str | None, resume_step):
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard drops the events at or after purge_step; a resume keeps metrics.jsonl's rows up to and
        # including the checkpoint's step (a row logged at that very step is not logged again), so purge after it.
        purge = resume_step + 1 if resume_step else None
        self.writer = SummaryWriter(log_dir=str(run_dir / TB_DIR), purge_step=purge)
        self.writer.add_text(f"{job}/config", config_text(config))

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, run_name: str, config: dict, job: str, run_id: str | None, resume_step):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cramming-simple"),
            name=run_name if job == "pretrain" else f"{run_name}-{job}",
            job_type=job,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
        )
        self.run_id = self.run.id

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, run_dir: Path, run_name: str, config: dict, job: str, run_id: str | None, resume_step):
        import mlflow

        self.mlflow = mlflow
        name = run_name if job == "pretrain" else f"{run_name}-{job}"
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else name)
        if run_id is None:
            mlflow.log_params({k: str(v)[:500] for k, v in flat(config).items()})
        self.run_id = self.run.info.run_id

    def log(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()
