"""The GLUE task table (`glue/tasks.yaml`) and fine-tuning protocols (`glue/<protocol>.yaml`), typed.

A protocol preset lists what it changes from the paper's protocol (the `Protocol` defaults, SPEC section 4);
`key=value` overrides from the command line go on top. Unknown keys fail with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import config_hash, find_preset, load_yaml, merge_typed, require
from .score import COLUMNS, TASKS

METRICS = ("accuracy", "f1", "matthews", "pearson", "spearman")
SCHEDULES = ("cosine", "linear", "constant_with_warmup")  # transformers.get_scheduler names


@dataclass
class TsvSpec:
    """How a task reads from the original GLUE TSV distribution (DIR/<folder>/<file>)."""

    folder: str = ""
    files: dict[str, str] = field(default_factory=dict)  # split -> file name, 'train' included
    header: bool = True
    names: list[str] = field(default_factory=list)  # column names of a file without a header row (CoLA)
    texts: list[str] = field(default_factory=list)  # columns holding the text(s), in the hub's order
    label: str = ""
    label_map: dict[str, int] = field(default_factory=dict)  # label strings -> the hub's integers; {}: numeric labels


@dataclass
class TaskSpec:
    texts: list[str] = field(default_factory=list)  # hub columns: one sentence, or a pair
    num_labels: int = 2
    regression: bool = False  # STS-B: one output, MSE
    metrics: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=lambda: ["validation"])  # evaluation splits
    tsv: TsvSpec = field(default_factory=TsvSpec)

    def validate(self) -> None:
        require(len(self.texts) in (1, 2), f"a task has one or two text columns, got {self.texts}")
        require(self.regression == (self.num_labels == 1), "regression tasks have num_labels 1, classification tasks 2 or more")
        unknown = sorted(set(self.metrics) - set(METRICS))
        require(bool(self.metrics) and not unknown, f"metrics must be among {', '.join(METRICS)}, got {self.metrics}")
        require(bool(self.splits), "a task needs at least one evaluation split")
        tsv = self.tsv
        require(len(tsv.texts) == len(self.texts), f"tsv.texts {tsv.texts} must name as many columns as texts {self.texts}")
        require(tsv.header or bool(tsv.names), "a TSV file without header needs tsv.names")
        missing = sorted({"train", *self.splits} - set(tsv.files))
        require(not missing, f"tsv.files lacks the split(s) {missing}")
        bad = {k: v for k, v in tsv.label_map.items() if not 0 <= v < self.num_labels}
        require(not bad, f"tsv.label_map values must be label ids below {self.num_labels}, got {bad}")


@dataclass
class TaskTable:
    hub: str = "nyu-mll/glue"
    tasks: dict[str, TaskSpec] = field(default_factory=dict)

    def validate(self) -> None:
        require(set(TASKS) <= set(self.tasks), f"the task table lacks {sorted(set(TASKS) - set(self.tasks))}")
        for c in COLUMNS:  # every GLUE column must be produced by the table
            spec = self.tasks[c.task]
            require(c.split in spec.splits and c.metric in spec.metrics, f"task {c.task} must score {c.metric} on {c.split} (GLUE column {c.label})")


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
        require(self.lr > 0 and self.eps > 0 and self.weight_decay >= 0, "lr and eps must be positive, weight_decay >= 0")
        require(all(0 <= b < 1 for b in self.betas), f"betas must be in [0, 1), got {self.betas}")
        require(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        require(0 <= self.warmup < 1, f"warmup is a share of the steps in [0, 1), got {self.warmup}")
        require(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {self.seeds}")
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            require(value is None or value > 0, f"{name} must be positive or null, got {value}")


def load_tasks(path: str | Path | None = None) -> TaskTable:
    path = Path(path) if path is not None else find_preset("glue", "tasks")
    return merge_typed(TaskTable, None, [(str(path), load_yaml(path))])


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

