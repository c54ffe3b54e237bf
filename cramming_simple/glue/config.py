"""GLUE's typed configs: the fine-tuning protocols (`glue/<protocol>.yaml`) and `GlueRun`, one glue invocation.
The task table is `glue.tasks`.

A protocol preset lists what it changes from the paper's protocol (the `Protocol` defaults, docs/recipe.md);
`key=value` overrides from the command line go on top. Unknown keys fail with the list of valid ones.
`GlueRun.from_options` (`from_args`: a parsed command line) is where a `glue` invocation is decided and checked:
the run folder and which of its models, the protocol with its overrides, tasks, seeds, the data source and the
trackers. Overrides are routed here, in one place: `impl.tracker=` (spelled as pretraining spells it) picks
trackers, every other key is the protocol's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from ..config import config_hash, dotlist, load_yaml, merge_typed, require
from ..presets import find_preset
from ..profiles import ADDED_LATER as PROFILE_ADDED_LATER
from ..runs import GLUE, MODEL, glue_name, snapshot_name
from ..runtime import PRECISIONS
from ..tracking import check_trackers
from .tasks import TaskTable, load_tasks

SCHEDULES = ("cosine", "linear", "constant_with_warmup")  # transformers.get_scheduler names
WARMUP_FROM = ("each_task", "first_task")


SINGLE_TEXT = ("clean", "cramming")
TRAIN_ORDERS = ("shuffle", "stored")


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
    # How the code behind the published numbers fine-tuned (cramming_simple.profiles; the `published` protocol):
    precision: str = "auto"  # auto (bf16 on CUDA and bf16 CPUs, else fp32) | bf16 | fp16 (GradScaler) | fp32
    head_width: Optional[int] = None  # width of the head's dense layer; None: the encoder's width (cramming: 1024)
    attention_dropout: float = 0.0  # dropout on the attention probabilities while fine-tuning (cramming: 0.1)
    warmup_from: str = "each_task"  # each_task: warmup from each task's own steps | first_task: every task takes
    # the warmup step count of `warmup_task` (cramming kept its first task's count for all later tasks)
    warmup_task: str = "cola"  # the first task of cramming's GLUE task list
    single_text: str = "clean"  # one-sentence tasks (CoLA, SST-2): clean [CLS] A [SEP] | cramming [CLS] A [SEP] [SEP]
    # (cramming passed an empty second text, to get its tokenizer's pair template with its [CLS])
    drop_last: bool = False  # drop each epoch's last partial training batch, as cramming's dataloader did
    train_order: str = "shuffle"  # shuffle (a new order every epoch) | stored (the same, unshuffled order every epoch:
    # cramming's default impl.shuffle_in_dataloader=False)

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
        require(
            self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
        )
        require(self.head_width is None or self.head_width > 0, f"head_width must be positive, got {self.head_width}")
        require(0 <= self.attention_dropout < 1, f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        require(
            self.warmup_from in WARMUP_FROM,
            f"warmup_from must be one of {', '.join(WARMUP_FROM)}, got {self.warmup_from!r}",
        )
        require(
            self.single_text in SINGLE_TEXT,
            f"single_text must be one of {', '.join(SINGLE_TEXT)}, got {self.single_text!r}",
        )
        require(
            self.train_order in TRAIN_ORDERS,
            f"train_order must be one of {', '.join(TRAIN_ORDERS)}, got {self.train_order!r}",
        )
        for name in ("max_train_examples", "max_eval_examples"):
            value = getattr(self, name)
            require(value is None or value > 0, f"{name} must be positive or null, got {value}")


def load_protocol(name: str, overrides: list[str] = ()) -> tuple[str, Protocol]:
    """(protocol name, Protocol) from a preset name or YAML path plus `key=value` overrides."""
    require(name != "tasks", "'tasks' is the task table, not a protocol; use paper, published, cramming or smoke")
    path = find_preset("glue", name)
    protocol = merge_typed(Protocol, None, [(str(path), load_yaml(path)), ("command line", list(overrides))])
    return path.stem, protocol


# Keys added after results were first stored (the profile switches), at the clean value that reproduces what
# ran before them, stay out of the protocol's values: the hash of an unchanged protocol (which decides whether a
# stored result is reused) stays what it was.
ADDED_LATER = PROFILE_ADDED_LATER["glue"]


def protocol_values(protocol: Protocol) -> dict:
    """What a result depends on: every protocol value except the seed list (each result has its own seed)."""
    values = dataclasses.asdict(protocol)
    values.pop("seeds")
    if values["warmup_from"] == "each_task":
        values.pop("warmup_task")  # unused: any value is the same protocol
    return {k: v for k, v in values.items() if k not in ADDED_LATER or v != ADDED_LATER[k]}


def protocol_hash(protocol: Protocol) -> str:
    return config_hash(protocol_values(protocol))


ROUTED = ("impl.tracker",)  # the non-protocol keys a glue command line may set
# the options of a `glue` command line that make its GlueRun (GlueRun.from_args)
OPTIONS = ("protocol", "overrides", "tasks", "seeds", "data_dir", "at", "gpus", "force", "save_models")


@dataclass(frozen=True)
class GlueRun:
    """One `glue` run of one pretraining run: what to fine-tune, under which protocol, on which tasks and data.
    Its paths (`model_dir`, `glue_dir`) are defined here once; the runner's `Job` is a GlueRun with what
    `run(config)` found out (the data source, the hashes)."""

    run_dir: Path
    protocol_name: str
    protocol: Protocol
    tasks: list[str]
    table: TaskTable
    data_dir: str | None = None
    trackers: list[str] = field(default_factory=list)
    at: float | None = None  # a snapshot's budget fraction (model@0.50/), None: the final model
    workers: int = 1  # processes, one per GPU
    force: bool = False  # redo pairs that already have a result
    save_models: bool = False  # keep every fine-tuned model
    overrides: tuple[str, ...] = ()  # the protocol's key=value overrides as given (recorded, for the model card)

    @classmethod
    def from_args(cls, run_dir: str | Path, args: object) -> GlueRun:
        """The config a parsed `glue` command line describes (its options by name, see OPTIONS)."""
        return cls.from_options(run_dir, **{name: getattr(args, name) for name in OPTIONS})

    @classmethod
    def from_options(
        cls,
        run_dir: str | Path,
        *,
        protocol: str = "paper",
        overrides: list[str] = (),
        tasks: str = "all",
        seeds: str | None = None,
        data_dir: str | None = None,
        at: float | None = None,
        gpus: int = 1,
        force: bool = False,
        save_models: bool = False,
    ) -> GlueRun:
        """The config a command line describes; a typo in a protocol key or a task fails here."""
        protocol_overrides, trackers = route_overrides(list(overrides))
        with_seeds = [*protocol_overrides, *([f"seeds=[{seeds}]"] if seeds else [])]
        name, checked = load_protocol(protocol, with_seeds)
        table = load_tasks()
        require(gpus >= 1, f"--gpus must be at least 1, got {gpus}")
        first = checked.warmup_task if checked.warmup_from == "first_task" else None
        require(
            first is None or first in table.tasks,
            f"warmup_task must be a GLUE task ({', '.join(table.tasks)}), got {first!r}",
        )
        return cls(
            Path(run_dir),
            name,
            checked,
            table.select(tasks),
            table,
            data_dir=data_dir,
            trackers=trackers,
            at=at,
            workers=gpus,
            force=force,
            save_models=save_models,
            overrides=tuple(protocol_overrides),
        )

    @property
    def model_name(self) -> str:
        return MODEL if self.at is None else snapshot_name(self.at)

    @property
    def model_dir(self) -> Path:
        return self.run_dir / self.model_name

    @property
    def glue_name(self) -> str:
        return GLUE if self.at is None else glue_name(self.at)

    @property
    def glue_dir(self) -> Path:
        return self.run_dir / self.glue_name

    @property
    def first_task(self) -> str | None:
        """warmup_from=first_task: the task whose size sets every task's warmup (the published schedule)."""
        return self.protocol.warmup_task if self.protocol.warmup_from == "first_task" else None


def route_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the protocol's overrides, the trackers): `impl.tracker=` picks trackers, any other `impl.` key is refused,
    the rest belong to the protocol (whose typed config refuses unknown keys)."""
    impl = [o for o in overrides if o.startswith("impl.")]
    unknown = [o for o in impl if o.split("=", 1)[0] not in ROUTED]
    require(not unknown, f"glue takes {', '.join(ROUTED)} and protocol keys; not {', '.join(unknown)}")
    chosen = OmegaConf.to_container(dotlist(impl)).get("impl", {}).get("tracker", "none")
    return [o for o in overrides if o not in impl], check_trackers(chosen)
