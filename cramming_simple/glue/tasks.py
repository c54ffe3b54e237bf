"""The GLUE task schema, in one place: the eight tasks, the nine columns of the GLUE average, the metric
names, and the typed task table (`glue/tasks.yaml`) that says how to read and score each task.

Config, scoring, data reading, reports and plots all import from here; the table itself is data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_yaml, merge_typed, require
from ..presets import find_preset
from .metrics import METRIC_FUNCTIONS

TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")  # hub config names (nyu-mll/glue)
METRICS = tuple(METRIC_FUNCTIONS)  # accuracy, f1, matthews, pearson, spearman


@dataclass(frozen=True)
class Column:
    label: str  # as in the paper's Table 2
    task: str  # hub config name
    split: str
    metric: str


# The nine numbers of the GLUE average (MNLI matched and mismatched both count), in Table 2's order.
COLUMNS = (
    Column("MNLI-m", "mnli", "validation_matched", "accuracy"),
    Column("MNLI-mm", "mnli", "validation_mismatched", "accuracy"),
    Column("SST-2", "sst2", "validation", "accuracy"),
    Column("STS-B", "stsb", "validation", "pearson"),
    Column("RTE", "rte", "validation", "accuracy"),
    Column("QNLI", "qnli", "validation", "accuracy"),
    Column("QQP", "qqp", "validation", "f1"),
    Column("MRPC", "mrpc", "validation", "f1"),
    Column("CoLA", "cola", "validation", "matthews"),
)
TASK_LABELS = {c.task: "MNLI" if c.task == "mnli" else c.label for c in COLUMNS}  # a task's name in tables


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
    score_range: list[float] = field(default_factory=list)  # regression: [low, high] of a valid score; []: any
    labels: list[str] = field(default_factory=list)  # names by label id (a saved classifier's id2label); [] for none
    metrics: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=lambda: ["validation"])  # evaluation splits
    tsv: TsvSpec = field(default_factory=TsvSpec)

    def validate(self) -> None:
        require(len(self.texts) in (1, 2), f"a task has one or two text columns, got {self.texts}")
        require(
            self.regression == (self.num_labels == 1),
            "regression tasks have num_labels 1, classification tasks 2 or more",
        )
        require(
            not self.labels or len(self.labels) == self.num_labels,
            f"labels names every label id: {self.num_labels} names, got {self.labels}",
        )
        unknown = sorted(set(self.metrics) - set(METRICS))
        require(bool(self.metrics) and not unknown, f"metrics must be among {', '.join(METRICS)}, got {self.metrics}")
        require(bool(self.splits), "a task needs at least one evaluation split")
        require(
            not self.score_range or (self.regression and len(self.score_range) == 2),
            f"score_range is [low, high] of a regression task, got {self.score_range}",
        )
        tsv = self.tsv
        require(
            len(tsv.texts) == len(self.texts), f"tsv.texts {tsv.texts} must name as many columns as texts {self.texts}"
        )
        require(tsv.header or bool(tsv.names), "a TSV file without header needs tsv.names")
        missing = sorted({"train", *self.splits} - set(tsv.files))
        require(not missing, f"tsv.files lacks the split(s) {missing}")
        bad = {k: v for k, v in tsv.label_map.items() if not 0 <= v < self.num_labels}
        require(not bad, f"tsv.label_map values must be label ids below {self.num_labels}, got {bad}")


@dataclass
class TaskTable:
    hub: str = "nyu-mll/glue"
    tasks: dict[str, TaskSpec] = field(default_factory=dict)

    def select(self, value: str) -> list[str]:
        """'all' or a comma list -> task names in the table's order (largest first)."""
        if value == "all":
            return list(self.tasks)
        wanted = [t.strip().lower() for t in value.split(",") if t.strip()]
        unknown = sorted(set(wanted) - set(self.tasks))
        require(
            bool(wanted) and not unknown,
            f"unknown GLUE task(s) {unknown or value!r}. Valid: all, {', '.join(self.tasks)}",
        )
        return [t for t in self.tasks if t in wanted]

    def validate(self) -> None:
        require(set(TASKS) <= set(self.tasks), f"the task table lacks {sorted(set(TASKS) - set(self.tasks))}")
        for c in COLUMNS:  # every GLUE column must be produced by the table
            spec = self.tasks[c.task]
            require(
                c.split in spec.splits and c.metric in spec.metrics,
                f"task {c.task} must score {c.metric} on {c.split} (GLUE column {c.label})",
            )


def load_tasks(path: str | Path | None = None) -> TaskTable:
    """The task table: `glue/tasks.yaml` (or a file of the same schema), typed and validated."""
    path = Path(path) if path is not None else find_preset("glue", "tasks")
    return merge_typed(TaskTable, None, [(str(path), load_yaml(path))])
