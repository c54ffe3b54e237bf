"""GLUE fine-tuning protocols (`glue/<protocol>.yaml`), typed. The task table is `glue.tasks`.

A protocol preset lists what it changes from the paper's protocol (the `Protocol` defaults, docs/recipe.md);
`key=value` overrides from the command line go on top. Unknown keys fail with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from ..config import config_hash, load_yaml, merge_typed, require
from ..presets import find_preset

SCHEDULES = ("cosine", "linear", "constant_with_warmup")  # transformers.get_scheduler names


@dataclass
class Protocol:
    """Fine-tuning hyperparameters, the same for every task. Defaults: the paper's protocol."""

    epochs: int = 5
    batch_size: int = 32
    lr: float = 1.5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.1  # linear warmup over this share of each task's own optimiser steps
    max_length: int = 128
    dropout: float = 0.1
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    max_train_examples: Optional[int] = None  # a fixed random subset of the training set (smoke runs); None: all
    max_eval_examples: Optional[int] = None  # a fixed random subset of each evaluation split; None: all
    eval_batch_size: int = 128

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "eval_batch_size"):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        require(
            self.lr > 0 and self.eps > 0 and self.weight_decay >= 0, "lr and eps must be positive, weight_decay >= 0"
        )
        require(all(0 <= b < 1 for b in self.betas), f"betas must be in [0, 1), got {self.betas}")
        require(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(0 <= self.warmup < 1, f"warmup is a share of the steps in [0, 1), got {self.warmup}")
        require(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        require(
            bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {self.seeds}"
        )
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            require(value is None or value > 0, f"{name} must be positive or null, got {value}")


def load_protocol(name: str, overrides: list[str] = ()) -> tuple[str, Protocol]:
    """(protocol name, Protocol) from a preset name or YAML path plus `key=value` overrides."""
    require(name != "tasks", "'tasks' is the task table, not a protocol; use paper, cramming or smoke")
    path = find_preset("glue", name)
    protocol = merge_typed(Protocol, None, [(str(path), load_yaml(path)), ("command line", list(overrides))])
    return path.stem, protocol


def protocol_values(protocol: Protocol) -> dict:
    """What a result depends on: every protocol value except the seed list (each result has its own seed)."""
    values = dataclasses.asdict(protocol)
    values.pop("seeds")
    return values


def protocol_hash(protocol: Protocol) -> str:
    return config_hash(protocol_values(protocol))
