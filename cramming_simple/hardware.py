"""Reference hardware: how fast one device trains the baseline (Pre-LN) at a budget's arch, microbatch and sequence
length, so that a budget's hours can be hours on that device (docs/recipe.md, "Budgets on other hardware").

`pretrain --reference NAME` measures the same rate here before training (bench.calibrate) and trains for
  local hours = reference hours x (reference Pre-LN microbatches/s / local Pre-LN microbatches/s),
the same local hours for every block, so that a faster block still makes more steps, as in the paper.

A reference is found by name or path, first match wins:
  - a path to a YAML file with the fields of `HardwareReference`;
  - the user's own (`calibrate --save NAME`): <user data folder>/references/<NAME>.yaml ($CRAMMING_SIMPLE_REFERENCES
    when set), so that someone with the paper's GPU can publish its figure;
  - the shipped ones, `reports/reference/hardware.yaml` (the wheel carries it), each with its source and derivation.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

from .config import ConfigError, load_yaml, merge_typed, require, to_dict
from .presets import shipped

SHIPPED = "hardware.yaml"  # in reports/reference/
USER_ENV = "CRAMMING_SIMPLE_REFERENCES"  # where saved references live, instead of the user data folder
PRECISIONS = ("bf16", "fp16", "fp32")
# Data for a reference budget: the sequences Pre-LN reads in it, times this, so that a block up to 1.5x as fast
# reads no row twice (the fastest published block is 1.20x Pre-LN, He & Hofmann Table 1). cramming sizes its data
# the same way: "slightly more than budget * 60 * 60 * expected tokens/sec" (its data configs).
DATA_MARGIN = 1.5


@dataclass
class HardwareReference:
    """One device's Pre-LN training rate: what a reference budget's hours are measured in."""

    name: str = ""
    device: str = ""  # the GPU, as torch names it (e.g. "NVIDIA GeForce RTX 3090")
    preln_microbatches_per_s: float = 0.0  # Pre-LN training microbatches per second on it
    arch: str = "crammed-bert"  # the arch preset the rate was measured at
    microbatch: int = 128
    seq_len: int = 128
    precision: str = "bf16"  # bf16 | fp16 | fp32 (no autocast)
    compiled: Optional[bool] = None  # torch.compile; None: not known
    source: str = ""  # where the figure comes from: a paper and its table or figure, a file, or a calibration
    date: str = ""  # of the measurement (or the source)
    estimate: bool = False  # read off a plot or inferred, not measured: reports say so
    derivation: str = ""  # how the number was worked out from the source
    torch: Optional[str] = None  # the software it was measured with, when known
    cuda: Optional[str] = None
    command: Optional[str] = None  # the command that measured it

    def validate(self) -> None:
        require(bool(self.name), "a hardware reference needs a name")
        require(
            self.preln_microbatches_per_s > 0 and math.isfinite(self.preln_microbatches_per_s),
            f"reference {self.name}: preln_microbatches_per_s must be a positive number, got "
            f"{self.preln_microbatches_per_s}",
        )
        require(self.microbatch > 0 and self.seq_len > 0, f"reference {self.name}: microbatch and seq_len must be > 0")
        require(
            self.precision in PRECISIONS,
            f"reference {self.name}: precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'",
        )
        require(bool(self.device and self.source), f"reference {self.name}: device and source are required")

    def mismatch_text(self, arch: str, microbatch: int, seq_len: int) -> str | None:
        return settings_differ((self.arch, self.microbatch, self.seq_len), (arch, microbatch, seq_len))


def settings_differ(measured: tuple, budget: tuple) -> str | None:
    """How a reference's (arch, microbatch, seq_len) differs from a budget's, or None."""
    differ = [
        f"{what} {ours} (the budget's: {theirs})"
        for what, ours, theirs in zip(("arch", "microbatch", "seq_len"), measured, budget)
        if ours != theirs
    ]
    return ", ".join(differ) or None


def check_settings(name: str, measured: tuple, budget: tuple) -> None:
    """Refuse, in one line, a reference measured at another (arch, microbatch, seq_len) than the budget's: its rate
    would not measure the budget's work."""
    differ = settings_differ(measured, budget)
    if differ:
        same_model = measured[0] == budget[0] and measured[2] == budget[2]
        hint = f"; pass train.microbatch={measured[1]} to train at its microbatch" if same_model else ""
        raise ConfigError(
            f"reference {name} was measured at {differ}: its rate does not measure this budget{hint}, or "
            "calibrate a reference at the budget's settings (cramming-simple calibrate --save NAME)"
        )


def short_device(device: str, estimate: bool = False) -> str:
    """'RTX 2080 Ti (estimate)': how reports name a reference device."""
    return device.removeprefix("NVIDIA ").removeprefix("GeForce ") + (" (estimate)" if estimate else "")


@dataclass
class ReferenceBudget:
    """The `reference:` of a run's config.yaml and summary.json: a budget in hours of a reference device, and the
    calibration that turned them into hours here. Filled from the reference at load; calibrated before training."""

    name: str = ""
    device: str = ""  # the reference device
    source: str = ""
    estimate: bool = False
    reference_rate: float = 0.0  # Pre-LN microbatches/s on the reference device
    arch: str = "crammed-bert"  # what the reference rate was measured at (checked against the budget)
    microbatch: int = 128
    seq_len: int = 128
    data_sequences: Optional[int] = None  # data.max_sequences this reference sized (None: the user set it)
    local_device: Optional[str] = None  # where it was calibrated, and what it measured there
    local_rate: Optional[float] = None  # Pre-LN microbatches/s here (median of the rounds)
    rate_low: Optional[float] = None  # its 95 % interval
    rate_high: Optional[float] = None
    local_hours: Optional[float] = None  # the run's budget here
    date: Optional[str] = None  # of the calibration
    calibration: Dict[str, Any] = field(default_factory=dict)  # rounds, seconds, precision, compiled, file, ...

    @classmethod
    def of(cls, ref: HardwareReference) -> ReferenceBudget:
        return cls(
            name=ref.name,
            device=ref.device,
            source=ref.source,
            estimate=ref.estimate,
            reference_rate=ref.preln_microbatches_per_s,
            arch=ref.arch,
            microbatch=ref.microbatch,
            seq_len=ref.seq_len,
        )

    def check(self, arch: str, microbatch: int, seq_len: int) -> None:
        check_settings(self.name, (self.arch, self.microbatch, self.seq_len), (arch, microbatch, seq_len))

    @property
    def calibrated(self) -> bool:
        return self.local_hours is not None

    def preln_sequences(self, hours: float) -> float:
        """The sequences Pre-LN reads in `hours` on the reference device (one GPU): what the budget consumes."""
        return hours * 3600 * self.reference_rate * self.microbatch

    def hours_here(self, hours: float, local_rate: float) -> float:
        """Reference hours as hours here: hours x reference rate / local rate."""
        return hours * self.reference_rate / local_rate

    def line(self, hours: float) -> str:
        """'24 h on RTX 2080 Ti (estimate) = H h [low, high] on <this device> (calibrated ...)'."""
        there = short_device(self.device, self.estimate)
        if not self.calibrated:
            return f"{hours:g} h on {there} (not calibrated yet)"
        low = self.hours_here(hours, self.rate_high) if self.rate_high else None
        high = self.hours_here(hours, self.rate_low) if self.rate_low else None
        interval = f" [{low:.3g}, {high:.3g}]" if low and high else ""
        return (
            f"{hours:g} h on {there} = {self.local_hours:.3g} h{interval} on {self.local_device} (calibrated "
            f"{(self.date or '')[:10]}: Pre-LN {self.local_rate:.3g} microbatches/s here, {self.reference_rate:.3g} "
            f"there; reference {self.name})"
        )


def recorded_line(recorded: dict, hours: float) -> str:
    """`ReferenceBudget.line` of a run's recorded `reference` (summary.json, config.yaml; unknown keys ignored)."""
    known = set(ReferenceBudget.__dataclass_fields__)
    return ReferenceBudget(**{k: v for k, v in recorded.items() if k in known}).line(hours)


# ----------------------------------------------------------------------------------------------- finding them


def user_folder() -> Path:
    """Where `calibrate --save` keeps the user's references: $CRAMMING_SIMPLE_REFERENCES, else the user data folder
    (e.g. ~/.local/share/cramming-simple/references)."""
    env = os.environ.get(USER_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("cramming-simple")) / "references"


def parse(values: Any, origin: str) -> HardwareReference:
    """One entry, typed and validated: an unknown field fails naming the valid ones."""
    return merge_typed(HardwareReference, None, [(origin, values)])


def shipped_references() -> dict[str, HardwareReference]:
    path = shipped("reference") / SHIPPED
    raw = OmegaConf.to_container(load_yaml(path))
    entries = raw.get("references") if isinstance(raw, dict) else None
    require(isinstance(entries, list), f"{path}: expected a list under 'references'")
    out: dict[str, HardwareReference] = {}
    for i, values in enumerate(entries):
        ref = parse(values, f"{path} (entry {i + 1})")
        require(ref.name not in out, f"{path}: reference {ref.name} is listed twice")
        out[ref.name] = ref
    return out


def user_references() -> dict[str, HardwareReference]:
    folder = user_folder()
    refs = (parse(load_yaml(p), str(p)) for p in sorted(folder.glob("*.yaml"))) if folder.is_dir() else ()
    return {r.name: r for r in refs}


def known_references() -> dict[str, HardwareReference]:
    """Every reference by name: the shipped ones, then the user's own."""
    return {**shipped_references(), **user_references()}


def find_reference(name: str) -> HardwareReference:
    """A reference by path (a .yaml file) or by name (the user's own, else a shipped one)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"--reference {name}: no such file")
        return parse(load_yaml(path), str(path))
    known = known_references()
    if name not in known:
        listed = ", ".join(known) or "none"
        raise ConfigError(
            f"unknown reference '{name}'. Known: {listed} (or a path to a .yaml file; `cramming-simple calibrate "
            "--save NAME` adds your own)"
        )
    return known[name]


def save_reference(ref: HardwareReference) -> Path:
    """Write `ref` as the user's reference named ref.name; a shipped name is refused (it would hide the shipped
    figure and its source)."""
    ref.validate()
    require(
        all(c.isalnum() or c in "-_." for c in ref.name),
        f"--save {ref.name}: a reference name is letters, digits, '-', '_' and '.'",
    )
    if ref.name in shipped_references():
        raise ConfigError(f"--save {ref.name}: a shipped reference has that name; choose another")
    path = user_folder() / f"{ref.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(to_dict(ref))))
    return path
