"""The data a pretraining run trains on: prepared (or found) in the cache by rank 0 before the budget starts,
its tokenizer and identity (recorded in summaries and checkpoints), the training stream and the held-out slice."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError
from ..data import (
    CACHE_ENV,
    MicrobatchStream,
    MLMCollator,
    PackedData,
    Split,
    check_tokenizer,
    data_mismatch,
    load_tokenizer,
    prepare,
)
from ..runs import has_checkpoint, read_summary
from ..runtime import autocast_dtype
from .config import PretrainConfig
from .distributed import Dist
from .evaluate import HeldOut
from .folder import cache_hint, check_data_at_hand


class RunData:
    def __init__(self, cfg: PretrainConfig, run_dir: Path, dist: Dist, device: torch.device):
        self.cfg, self.run_dir, self.dist, self.device = cfg, run_dir, dist, device
        self.prepare()

    def prepare(self) -> None:
        """Data first: preparation is not budget time. Rank 0 prepares (or finds) it, the others then reuse it."""
        cfg, dist = self.cfg, self.dist
        error = None
        if dist.main:
            try:
                if has_checkpoint(self.run_dir):
                    check_data_at_hand(cfg, self.run_dir)
                self.prepared = prepare(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len)
            except Exception as err:  # noqa: BLE001 - raised on every rank by fail_together
                error = err
        dist.fail_together(error)
        if not dist.main:
            self.prepared = prepare(cfg.data, cfg.arch.vocab_size, cfg.arch.seq_len, show_progress=False)
        self.tokenizer = load_tokenizer(self.prepared.tokenizer_dir)
        check_tokenizer(self.tokenizer, cfg.arch.vocab_size)
        self.pad_token_id = self.tokenizer.pad_token_id  # the trainer builds the arch with it (the padding index)
        self.identity = self.prepared.identity(self.tokenizer)  # recorded in summaries and checkpoints
        data = PackedData(self.prepared.path, verify=cfg.data.verify)
        t = cfg.train
        collate = MLMCollator.for_tokenizer(self.tokenizer, cfg.arch.seq_len, t.mask_prob, t.seed, t.masking)
        self.split = Split.of(data, cfg.data.holdout)
        self.stream = MicrobatchStream(
            data, collate, t.microbatch, t.seed, dist.rank, dist.world, self.split, cfg.data.order
        )
        self.heldout = (
            HeldOut(
                data,
                self.split,
                collate,
                t.microbatch,
                dist,
                self.device,
                autocast_dtype(self.device, cfg.impl.precision),
            )
            if self.split.held
            else None
        )

    def check_checkpoint(self, ckpt: dict) -> None:
        """A checkpoint trained on other token ids (another tokenizer or other shards) is refused."""
        recorded = ckpt.get("data") or (read_summary(self.run_dir) or {}).get("data")  # older checkpoints: no data
        reason = data_mismatch(recorded, self.identity)
        if reason:
            raise ConfigError(
                f"cannot resume {self.run_dir}: the prepared data at {self.prepared.path} is not what it trained on: "
                f"{reason}. Resuming would change the token ids; point data.cache_dir (or {CACHE_ENV}) at the "
                f"cache the run used{cache_hint(recorded)}"
            )
