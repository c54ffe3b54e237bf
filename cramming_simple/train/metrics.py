"""Where a run's numbers go: the log window kept on the device, and the rows of metrics.jsonl and
diagnostics.jsonl, the trackers and the progress line (rank 0 writes; the others only take part in the syncs).

A full disk while appending a row raises `DiskFullError` here, where it happens; the trainer holds it for the
next stop vote, so that every rank stops together (rank 0 alone must not leave the others in an all-reduce).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..config import to_dict
from ..runs import DIAGNOSTICS, METRICS
from ..runtime import Progress, append_jsonl, atomic_write_bytes
from ..tracking import Trackers, tracker_names
from .distributed import Dist


class LogWindow:
    """Sums since the last log, kept on the device: no host sync per step, and a NaN/inf in any loss or
    gradient norm propagates into them. `totals` and `finite` are the syncs, averaged over ranks."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.norm_sum = torch.zeros((), device=device)
        self.steps = self.updates = self.tokens = 0
        self.start = 0.0

    def add_microbatch(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss_sum += loss.detach().float()
        self.steps += 1
        self.tokens += tokens

    def add_update(self, grad_norm: torch.Tensor) -> None:
        self.norm_sum += grad_norm.float()
        self.updates += 1

    def totals(self, dist: Dist) -> tuple[float, float]:
        """(summed loss, summed gradient norm), each the mean over ranks."""
        loss_total, norm_total = dist.mean(torch.stack([self.loss_sum, self.norm_sum])).tolist()
        return loss_total, norm_total

    def finite(self, dist: Dist) -> bool:
        return all(math.isfinite(v) for v in self.totals(dist))

    def reset(self, now: float) -> None:
        self.loss_sum.zero_()
        self.norm_sum.zero_()
        self.steps = self.updates = self.tokens = 0
        self.start = now


class MetricsLog:
    """The run's rows: metrics.jsonl (training and eval rows), diagnostics.jsonl, the trackers, progress."""

    def __init__(self, run_dir: Path, dist: Dist, cfg, resume_step: int, title: str):
        """`cfg`: the PretrainConfig (its name, trackers, budget and log interval); `resume_step`: where a resumed
        run's tracker curves continue (rank 0 only: the other ranks get no trackers and no progress line)."""
        self.run_dir, self.dist, self.budget_s = run_dir, dist, cfg.budget_s
        names = tracker_names(cfg.impl.tracker) if dist.main else []
        self.trackers = Trackers(names, run_dir, cfg.name, to_dict(cfg), resume_step=resume_step)
        self.progress = (
            Progress(cfg.budget_s, f"pretrain {title}", unit="s", log_every=cfg.impl.log_seconds) if dist.main else None
        )

    def write(self, row: dict, tracked: dict | None = None, kind: str = "train", diagnostics: dict | None = None):
        """Rank 0: one row to metrics.jsonl (and one to diagnostics.jsonl); `tracked` (default: the row) to the
        trackers under `kind`."""
        if not self.dist.main:
            return
        self.trackers.log(row if tracked is None else tracked, row["microbatch_steps"], kind)
        append_jsonl(self.run_dir / METRICS, row)  # a full disk raises DiskFullError
        if diagnostics is not None:
            append_jsonl(self.run_dir / DIAGNOSTICS, diagnostics)

    def show(self, position: float, **stats) -> None:
        if self.progress is not None:
            self.progress.update(min(position, self.budget_s), **stats)

    def close(self, **stats) -> None:
        if self.progress is not None:
            self.progress.close(**stats)
            self.progress = None

    def close_trackers(self) -> None:
        self.trackers.close()


def trim_logs(run_dir: Path, microbatch_steps: int) -> None:
    """On a resume (rank 0): rows logged after the checkpoint describe work that is redone now."""
    for log in (run_dir / METRICS, run_dir / DIAGNOSTICS):
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()
            kept = [line for line in lines if row_steps(line) <= microbatch_steps]
            atomic_write_bytes(log, "".join(line + "\n" for line in kept).encode())


def row_steps(line: str) -> float:
    """The microbatch step of a metrics.jsonl row; a row cut short (a crash, a full disk) counts as redone work."""
    try:
        return json.loads(line)["microbatch_steps"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
