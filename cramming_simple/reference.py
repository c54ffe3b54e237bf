"""The published numbers, kept as data (`reports/reference/<name>_table{1,2}.csv`), and the two names every
comparison is made against: the paper whose rows the Δ columns use, and the block speeds are relative to."""

from __future__ import annotations

import pandas as pd

from .errors import ConfigError
from .presets import shipped

PAPER = "he2023"  # He & Hofmann, "Simplifying Transformer Blocks": the rows Δ columns compare against
BASELINE = "preln"  # speed = microbatch steps (or tokens/s) relative to this block
PUBLISHED_HOURS = 24.0  # the budget of the published runs: only runs of that budget get a "Δ vs published"
PUBLISHED_REFERENCE = "rtx2080ti-he2023"  # their device (hardware.yaml): a 24 h budget on it is their experiment


def reference_names() -> list[str]:
    return sorted(p.name.removesuffix("_table1.csv") for p in shipped("reference").glob("*_table1.csv"))


def load_reference(name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The published Table 1 and Table 2 rows of `name`."""
    paths = [shipped("reference") / f"{name}_table{i}.csv" for i in (1, 2)]
    for p in paths:
        if not p.exists():
            raise ConfigError(f"reference '{name}' not found ({p}). Available: {', '.join(reference_names())}")
    tables = [pd.read_csv(p) for p in paths]
    for t in tables:
        t["note"] = t["note"].astype(object).where(t["note"].notna(), None)
    return tables[0], tables[1]


def published_rows(reference: pd.DataFrame | None) -> dict[str, pd.Series]:
    """The paper's own row per block: deltas compare against these (never against other sources' rows)."""
    if reference is None:
        return {}
    return {r.block: r for _, r in reference[reference.ref == PAPER].iterrows()}


def published_speeds() -> dict[str, float]:
    """The paper's speed column (Table 1) per block."""
    table = load_reference(PAPER)[0]
    table = table[(table.ref == PAPER) & table.speed.notna()]
    return dict(zip(table.block, table.speed.astype(float)))
