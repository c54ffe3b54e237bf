"""The held-out MLM loss and the inside-the-blocks diagnostics of a pretraining run (docs/design.md).

The held-out slice (`data.Split`) is never trained on and is the same for every run on one preparation; its
masks come from the same masking function with a fixed eval seed, so two runs' eval losses score the same
tokens. The loss is the mean cross-entropy over every masked token of the slice (batches weighted by their
masked-token counts), summed over ranks: each rank scores every world-th batch. `Evaluator` is the trainer's
component that takes both at every eval point.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..data import EVAL_SEED, MLMCollator, PackedData, Split, heldout_batches
from ..model import IGNORE
from ..model.diagnostics import measure
from ..runtime import autocast
from .distributed import Dist


class HeldOut:
    def __init__(
        self,
        data: PackedData,
        split: Split,
        collate: MLMCollator,
        batch: int,
        dist: Dist,
        device: torch.device,
        dtype: torch.dtype | None,
    ):
        # the same masking function, keyed by the eval seed: (CPU) batches of a few MB at most
        self.batches = heldout_batches(data, split, collate.reseeded(EVAL_SEED), batch)
        self.mine = self.batches[dist.rank :: dist.world]
        self.sequences = split.held
        self.dist, self.device, self.dtype = dist, device, dtype

    @torch.no_grad()
    def loss(self, model: nn.Module) -> float:
        """Mean MLM loss over every masked token of the held-out slice (model in eval mode while scoring)."""
        was_training = model.training
        model.eval()
        totals = torch.zeros(2, device=self.device, dtype=torch.float64)  # (sum of token losses, tokens)
        try:
            for batch in self.mine:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with autocast(self.device, self.dtype):
                    loss = model(**batch)
                tokens = (batch["labels"] != IGNORE).sum()
                totals += torch.stack([loss.double() * tokens, tokens.double()])
        finally:
            model.train(was_training)
        loss_sum, tokens = self.dist.mean(totals).tolist()  # a mean over ranks of both: the ratio of the sums
        return loss_sum / max(tokens, 1.0)

    def diagnostics(self, model: nn.Module) -> dict:
        """model.diagnostics.measure on the first held-out batch (the same batch at every eval point)."""
        with autocast(self.device, self.dtype):
            return measure(model, self.batches[0]["input_ids"].to(self.device))


@dataclass(frozen=True)
class Evaluation:
    """What an eval point measured: the held-out loss (None when not finite) at a position of the run
    (`BudgetClock.position`), how long it took, and on rank 0 the diagnostics."""

    loss: float | None
    at: dict
    seconds: float
    diagnostics: dict | None = None

    @property
    def step(self) -> int:
        return self.at["optimizer_steps"]

    def row(self) -> dict:
        """Its `eval` row of metrics.jsonl."""
        return {"kind": "eval", **self.at, "eval_loss": self.loss, "eval_s": round(self.seconds, 3)}


class Evaluator:
    """An eval point of the trainer: the held-out loss (every rank scores its share) and, on rank 0, the
    diagnostics. It measures and returns; the trainer records (state, rows) and pauses the clock. Without a
    held-out slice there is nothing to measure."""

    def __init__(self, heldout: HeldOut | None, dist: Dist):
        self.heldout, self.dist = heldout, dist

    def __call__(self, model: nn.Module, at: dict) -> Evaluation:
        assert self.heldout is not None, "no held-out slice: nothing to evaluate"
        started = time.perf_counter()
        loss = self.heldout.loss(model)
        diagnostics = self.heldout.diagnostics(model) if self.dist.main else None
        seconds = time.perf_counter() - started
        return Evaluation(loss if math.isfinite(loss) else None, at, seconds, diagnostics)
