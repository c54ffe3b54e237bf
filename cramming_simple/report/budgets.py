"""What each run's budget was, and what it may be compared with (docs/recipe.md, "Budgets on other hardware"):
budgets in hours of a reference device (runs of different references are not put in one table unless asked),
the published runs' budget (24 h on one RTX 2080 Ti), and runs a train.* cap stopped before their budget."""

from __future__ import annotations

import pandas as pd

from ..config import ConfigError
from ..reference import PUBLISHED_HOURS, PUBLISHED_REFERENCE
from ..runs import CAPPED
from ..train.schedules import lr_at
from .stats import missing

PUBLISHED_DEVICE = "RTX 2080 Ti"  # the published runs' GPU


def of_published_budget(run: pd.Series) -> bool:
    """Whether a run's budget is the published runs' (24 h, in plain hours or on their RTX 2080 Ti): only then is a
    difference to them a comparison. 24 h on another reference device is another amount of training."""
    hours, reference = run.get("budget_hours"), run.get("reference_name")
    return (
        not missing(hours)
        and abs(float(hours) - PUBLISHED_HOURS) < 1e-9
        and (missing(reference) or reference == PUBLISHED_REFERENCE)
    )


def plain_hours_note(runs: pd.DataFrame) -> str | None:
    """When runs of plain 24 h (no reference) on another GPU than the paper's are compared with the published
    numbers: what that compares."""
    plain = {
        n: str(r.device)
        for n, r in runs.iterrows()
        if of_published_budget(r) and missing(r.get("reference_name")) and PUBLISHED_DEVICE not in str(r.device)
    }
    if not plain:
        return None
    return (
        f"Δ vs published of {', '.join(plain)}: 24 h on {' / '.join(sorted(set(plain.values())))}, not the published "
        f"runs' 24 h on one {PUBLISHED_DEVICE}: another amount of training (--reference {PUBLISHED_REFERENCE} "
        "trains theirs, docs/recipe.md)"
    )


def published_note(runs: pd.DataFrame) -> str:
    hours = sorted({f"{h:g} h" for h in runs.budget_hours if not missing(h)}) or ["unknown"]
    return (
        f"no Δ vs published: the published numbers are {PUBLISHED_HOURS:g}-hour runs on a GPU, and a run is "
        f"compared with them only at that budget (these runs: {', '.join(hours)})"
    )


def check_budgets(runs, mixed: bool) -> str | None:
    """Runs of different budget references (or of a reference and of plain hours) trained different amounts: refused
    in one line, unless `mixed` (--mixed-budgets); then the footnote that says what was mixed."""

    def kind(r) -> str:
        hours = "?" if missing(r.budget_hours) else f"{r.budget_hours:g}"
        if missing(r.reference_name):
            return f"{hours} h here (plain hours)"
        return f"{hours} h on reference {r.reference_name}"

    kinds = {name: kind(r) for name, r in runs.iterrows()}
    by_reference = {name: None if missing(r.reference_name) else r.reference_name for name, r in runs.iterrows()}
    if len(set(by_reference.values())) <= 1:
        return None
    listed = "; ".join(f"{n}: {k}" for n, k in kinds.items())
    if not mixed:
        raise ConfigError(
            f"runs with different budget references in one table ({listed}): they trained different amounts. Report "
            "them separately, or pass --mixed-budgets"
        )
    return (
        f"budgets mixed (--mixed-budgets): {listed}; steps, losses and GLUE scores come from different amounts of "
        "training"
    )


def calibration_warnings(runs: pd.DataFrame) -> list[str]:
    """Runs of one reference budget that got different hours here: each calibrated on its own."""
    out = []
    named = runs[[isinstance(r, dict) and bool(r.get("name")) for r in runs.reference]] if len(runs) else runs
    for reference, group in named.groupby("reference_name", sort=False):
        hours = {name: h for name, h in zip(group.name, group.local_hours) if not missing(h)}
        if len({round(h, 6) for h in hours.values()}) > 1:
            listed = ", ".join(f"{n}: {h:.4g} h" for n, h in hours.items())
            out.append(
                f"runs of the {reference} budget got different hours here ({listed}): each calibrated on its own "
                "(a sweep, or make with REFERENCE=, calibrates once per kind of device)"
            )
    return out


def capped_note(name: str, r: pd.Series) -> str | None:
    """The footnote of a run a cap stopped before its budget (None: no cap stopped it)."""
    if missing(r.get("capped_at_p")):
        return None
    p, cap = float(r.capped_at_p), r.stop_reason if r.stop_reason in CAPPED else "max_microbatches"
    return (
        f"{name} was capped: train.{cap} stopped it at p = {p:.2f} of its budget, its learning rate still "
        f"{lr_at(p, 1.0):.2f} of its peak (never annealed); its speed is its rate, microbatch steps per training "
        "second"
    )
