"""The pretraining config, split as in cramming: arch / data / train / impl, plus the budget itself.

`budgets/<name>.yaml` fills it; `key=value` overrides on the command line come last. The arch node starts
from its preset (`arch.preset: tiny`), so `arch.preset=tiny arch.depth=4` means what it says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from ..config import ConfigError, dotlist, load_yaml, merge_typed, require, to_dict
from ..data.loader import MASKINGS
from ..data.packing import cache_root
from ..data.sources import DataConfig
from ..hardware import DATA_MARGIN, ReferenceBudget, find_reference
from ..model import ArchConfig, BlockRecipe, arch_config, block_spec, check_protocol, recorded_block
from ..optim import DECAY_RULES
from ..presets import find_preset
from ..runs import CONFIG
from ..runtime import PRECISIONS, compile_default, now_iso
from ..tracking import check_trackers
from .schedules import RAMPS


def block_recipe(block: str) -> BlockRecipe:
    """A block's recipe, read from its spec (model.blocks): built-ins set it there, a user's block may carry
    `lr` / `weight_decay` as class attributes (else Pre-LN's). An unknown name fails here, listing the valid ones."""
    return block_spec(block).recipe


@dataclass
class TrainConfig:
    microbatch: int = 128  # sequences per microbatch (per GPU)
    batch_max: int = 8192  # effective batch (sequences, all GPUs) reached at p = ramp_end
    ramp_end: float = 0.6
    ramp: str = "linear"  # linear (batch rounded down to microbatches, LR set once per optimiser step) | cramming
    # (its stepwise formula, and the LR set before every microbatch, as its per-microbatch LambdaLR did)
    lr: Optional[float] = None  # peak of the budget triangle; None: the block's recipe (block_recipe)
    weight_decay: Optional[float] = None  # None: the block's default
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-12
    grad_clip: float = 0.5
    mask_prob: float = 0.25
    masking: str = "clean"  # clean (never specials, 80/10/10 by chance) | cramming (specials too, exact counts)
    decay_rule: str = "ndim"  # ndim (no decay on tensors with ndim < 2) | names (cramming's rule by name: the
    # position scale is decayed too)
    seed: int = 0
    max_steps: Optional[int] = None  # stop after this many microbatch steps (stop_reason "max_steps"): a test cap
    # The published runs' cap (cramming's budget: 900,000 microbatches, bert-o4.yaml), a part of the recipe: the run
    # stops there (stop_reason "max_microbatches") while its learning rate follows the clock. None: the budget only.
    max_microbatches: Optional[int] = None

    def validate(self) -> None:
        require(
            self.microbatch > 0 and self.batch_max >= self.microbatch,
            "train.microbatch must be positive and at most train.batch_max",
        )
        require(0.0 < self.ramp_end <= 1.0, f"train.ramp_end must be in (0, 1], got {self.ramp_end}")
        require(self.ramp in RAMPS, f"train.ramp must be one of {', '.join(RAMPS)}, got '{self.ramp}'")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"train.betas must be two values in [0, 1), got {self.betas}",
        )
        require(0.0 < self.mask_prob < 1.0, f"train.mask_prob must be in (0, 1), got {self.mask_prob}")
        require(self.masking in MASKINGS, f"train.masking must be one of {', '.join(MASKINGS)}, got '{self.masking}'")
        require(
            self.decay_rule in DECAY_RULES,
            f"train.decay_rule must be one of {', '.join(DECAY_RULES)}, got '{self.decay_rule}'",
        )
        require(self.grad_clip > 0 and self.eps > 0, "train.grad_clip and train.eps must be positive")
        require(self.lr is None or self.lr > 0, "train.lr must be positive")
        for name in ("max_steps", "max_microbatches"):
            value = getattr(self, name)
            require(value is None or value > 0, f"train.{name} must be positive or null, got {value}")


@dataclass
class ImplConfig:
    device: str = "auto"  # auto | cuda | cpu
    precision: str = "auto"  # auto (bf16 on CUDA and bf16 CPUs, else fp32) | bf16 | fp16 (GradScaler) | fp32
    compile: Optional[bool] = None  # None: on for CUDA, off for CPU (decided when the config is validated)
    checkpoint_minutes: float = 30.0
    log_seconds: float = 10.0
    eval_minutes: Optional[float] = None  # held-out loss + diagnostics every so often; None: budget / 24 (60 for
    # 24 h); 0: only at the start and the end. Budget clock paused while scoring.
    keep_at: List[float] = field(default_factory=list)  # budget fractions at which model@<f>/ snapshots are kept
    prefetch: int = 4  # microbatches prepared ahead on a background thread
    threads: Optional[int] = None  # CPU threads for torch (None: torch's default)
    tracker: Any = "none"  # none | tensorboard | wandb | mlflow, or a list of them (tracking.py); rank 0 logs
    # A reference budget's calibration before training (bench.calibrate): timed rounds until the Pre-LN rate's 95 %
    # interval is within +-calibration_target of it, or calibration_seconds of them
    calibration_target: float = 0.03
    calibration_seconds: float = 180.0
    # The run folder's lock: flock (one process per folder, refused on filesystems whose locks are node-local) or
    # none (the scheduler keeps a second process out: a sweep's jobs then run as Slurm singletons)
    lock: str = "flock"

    def validate(self) -> None:
        require(self.device in ("auto", "cuda", "cpu"), f"impl.device must be auto, cuda or cpu, got '{self.device}'")
        require(
            self.precision in PRECISIONS,
            f"impl.precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'",
        )
        require(
            self.checkpoint_minutes > 0 and self.log_seconds > 0,
            "impl.checkpoint_minutes and impl.log_seconds must be positive",
        )
        require(self.eval_minutes is None or self.eval_minutes >= 0, "impl.eval_minutes must be 0 or more")
        require(self.lock in ("flock", "none"), f"impl.lock must be flock or none, got '{self.lock}'")
        require(
            0 < self.calibration_target < 1 and self.calibration_seconds > 0,
            "impl.calibration_target must be in (0, 1) and impl.calibration_seconds positive",
        )
        require(
            all(0.0 < f < 1.0 for f in self.keep_at) and len(set(self.keep_at)) == len(self.keep_at),
            f"impl.keep_at must be distinct budget fractions in (0, 1), got {self.keep_at}",
        )
        self.keep_at = sorted(self.keep_at)
        self.compile = compile_default(self.device) if self.compile is None else self.compile
        check_trackers(self.tracker)  # a missing package fails here, with the line that installs it


@dataclass
class PretrainConfig:
    name: str = ""  # run folder name; default <block>-<budget> (a user's block: its class name, lower case)
    block: str = "preln"  # a built-in name, path/to/file.py:Class, package.module:Class or an entry point (registry)
    # Where a user's block came from, filled at validation (None for a built-in block: its name says it): kind
    # (file | module | entry_point), path or module, class, title, sha256 of the source. A resumed run refuses to go
    # on when the source no longer has that hash.
    block_source: Optional[Dict[str, Any]] = None
    budget: str = ""  # the preset this came from
    hours: float = 24.0  # wall-clock training budget: hours here, or hours on the reference device when `reference`
    # A budget in hours of a reference device (--reference; hardware.py): the reference, and the calibration that
    # made its hours into hours here (`local_hours`, the same for every block). None: hours here.
    reference: Optional[ReferenceBudget] = None
    arch: ArchConfig = field(default_factory=ArchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    # Changes of the recipe a resumed run was told to accept (--extend-budget): {at, changes: {key: [old, new]}}
    amendments: List[Dict[str, Any]] = field(default_factory=list)

    def validate(self) -> None:
        """Also fills what the budget left to the block: its recipe's peak LR and weight decay, and the run name.

        The block is loaded (a user's: imported, its source checked against `block_source` when that is
        recorded, and tried on a small input), so a broken block fails here, before any data preparation."""
        spec = recorded_block(self.block, self.block_source)
        check_protocol(spec, self.arch)
        self.block, self.block_source = spec.ref, None if spec.builtin else dict(spec.source)
        recipe = block_recipe(self.block)
        require(self.hours > 0, f"hours must be positive, got {self.hours}")
        if self.reference is not None:
            self.reference.check(self.arch.preset, self.train.microbatch, self.arch.seq_len)
        self.train.lr = recipe.lr if self.train.lr is None else self.train.lr
        self.train.weight_decay = recipe.weight_decay if self.train.weight_decay is None else self.train.weight_decay
        self.name = self.name or f"{spec.name}-{self.budget}" + (f"-{self.reference.name}" if self.reference else "")

    @property
    def local_hours(self) -> float:
        """The budget in hours of training here: `hours`, or the reference's hours made into hours here."""
        if self.reference is None:
            return self.hours
        if not self.reference.calibrated:
            raise ConfigError(f"the reference budget ({self.reference.name}) is not calibrated yet")
        return self.reference.local_hours

    @property
    def budget_s(self) -> float:
        """Seconds of training: what the budget clock counts down (train.clock), the one place it reads them."""
        return self.local_hours * 3600.0

    @property
    def eval_every_s(self) -> float | None:
        """Seconds of budget between held-out evaluations (None: only at the start and the end)."""
        minutes = self.local_hours * 60 / 24 if self.impl.eval_minutes is None else self.impl.eval_minutes
        return minutes * 60 if minutes > 0 else None

    @classmethod
    def from_budget(
        cls,
        budget: str,
        block: str | None = None,
        overrides: list[str] = (),
        name: str | None = None,
        reference: str | None = None,
    ) -> PretrainConfig:
        """budgets/<budget>.yaml (or a YAML path) + `key=value` overrides, validated, block recipe filled.

        The arch node starts from its preset (`arch.preset` in the overrides, else the budget's). `reference`: the
        budget's hours are hours on that device (a name or a YAML path; hardware.py); unless data.max_sequences is
        set, the data is sized to what the budget reads (`sized_data`). It is calibrated before training.
        """
        path = find_preset("budgets", budget)
        raw = load_yaml(path)
        cli = dotlist(overrides)
        preset = OmegaConf.select(cli, "arch.preset") or OmegaConf.select(raw, "arch.preset") or "crammed-bert"
        layers = [(str(path), raw), ("command line", cli)]
        if block:
            layers.append(("--block", {"block": block}))
        if name is not None:
            require(
                name.strip() == name and name not in ("", ".", "..") and "/" not in name,
                f"--name must be a folder name (no '/', no surrounding spaces, not empty), got {name!r}",
            )
            layers.append(("--name", {"name": name}))
        if reference:
            layers.append(("--reference", {"reference": to_dict(ReferenceBudget.of(find_reference(reference)))}))
        cfg = merge_typed(cls, cls(arch=arch_config(preset), budget=path.stem), layers)
        cfg.data.cache_dir = str(cache_root(cfg.data.cache_dir).resolve())  # recorded: resumable from any folder
        if cfg.reference is not None and cfg.data.max_sequences is None:
            cfg.data.max_sequences = cfg.reference.data_sequences = sized_data(cfg)
        return cfg

    @classmethod
    def from_run(cls, run_dir: str | Path, overrides: list[str] = (), extend_budget: bool = False) -> PretrainConfig:
        """The config a run folder was started with (its config.yaml), plus `key=value` overrides.

        The folder names the run (a copied or moved folder is its own run). An override that changes the recipe
        (anything but how the run executes: HOW_IT_RUNS) is refused, unless `extend_budget`: then the change is
        recorded in `amendments`, and the run goes on under the new values.
        """
        saved = Path(run_dir) / CONFIG
        if not saved.is_file():
            raise ConfigError(f"{run_dir} has no {CONFIG}: not a run folder")
        raw = load_yaml(saved)
        # A run started before held-out evaluation existed trained on every row: it resumes on the same stream.
        older = [("older run", {"data": {"holdout": 0}})] if OmegaConf.select(raw, "data.holdout") is None else []
        before = merge_typed(cls, None, [(str(saved), raw), *older])
        cfg = merge_typed(cls, None, [(str(saved), raw), *older, ("command line", list(overrides))])
        before.name = cfg.name = Path(run_dir).name
        if cfg.reference is not None and cfg.reference.calibrated:  # its calibration stays; new hours are rescaled
            cfg.reference.local_hours = cfg.reference.hours_here(cfg.hours, cfg.reference.local_rate)
        if cfg.data.cache_dir != before.data.cache_dir:  # moved on a resume: recorded absolute, as a new run's
            cfg.data.cache_dir = str(cache_root(cfg.data.cache_dir).resolve())
        changes = recipe_changes(before, cfg)
        if changes and not extend_budget:
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
            raise ConfigError(
                f"--resume would change the recipe of {run_dir} ({listed}): a resumed run keeps its recipe. Pass "
                "--extend-budget to go on under the new values (recorded in the run), or start a new run with --name"
            )
        if changes:
            cfg.amendments = [*cfg.amendments, {"at": now_iso(), "changes": {k: list(v) for k, v in changes.items()}}]
        return cfg


def sized_data(cfg: PretrainConfig) -> int:
    """The sequences to prepare for a reference budget: what Pre-LN reads in it (hours x the reference rate x the
    microbatch, on one GPU), times DATA_MARGIN for faster blocks, plus the held-out slice. The same for every block
    and every machine (it does not depend on a calibration), so one preparation serves the whole comparison."""
    ref = cfg.reference
    return math.ceil(ref.preln_sequences(cfg.hours) * DATA_MARGIN) + cfg.data.holdout


# Keys a resumed run may change: how it executes, not what it trains (cramming's impl, and where data is read).
HOW_IT_RUNS = (
    "impl.checkpoint_minutes",
    "impl.log_seconds",
    "impl.eval_minutes",
    "impl.keep_at",
    "impl.prefetch",
    "impl.threads",
    "impl.tracker",
    "impl.calibration_target",
    "impl.calibration_seconds",
    "impl.lock",
    "train.max_steps",  # a cap on the steps: the schedules follow the clock and do not see it
    "data.cache_dir",
    "data.verify",
)


def recipe_changes(before: PretrainConfig, after: PretrainConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every value that differs between two configs, outside HOW_IT_RUNS."""
    old, new = flatten(to_dict(before)), flatten(to_dict(after))
    keys = [k for k in {**old, **new} if k not in HOW_IT_RUNS and k != "amendments"]
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
