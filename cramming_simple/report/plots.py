"""The report's figures, each written as PNG and PDF: MLM loss against wall-clock hours (paper Fig. 7) and
against microbatch steps (Fig. 24), the learning-rate and batch-size schedules, GLUE per task.

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global state and no GUI backend
(saving goes through Agg), so reports render on headless machines and inside tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..glue.tasks import COLUMNS

WIDTH = 5.5  # inches: fits a single paper column at full text width without rescaling the fonts much
COLORS = [f"C{i}" for i in range(10)]


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1], metadata={"CreationDate": None})  # no timestamp: same inputs, same file
    return paths


def curves(runs: pd.DataFrame, metrics: pd.DataFrame):
    """(run row, colour, its finite metrics rows) for every run that logged metrics."""
    for i, (name, r) in enumerate(runs.iterrows()):
        m = metrics[metrics.run == name] if "run" in metrics else metrics.iloc[:0]
        if "loss" in m and not m.empty:
            yield r, COLORS[i % len(COLORS)], m.replace([np.inf, -np.inf], np.nan)


def loss_plot(runs: pd.DataFrame, metrics: pd.DataFrame, out: Path, x: str) -> list[Path]:
    """MLM loss against x = 'hours' (elapsed wall-clock) or 'steps' (microbatch steps)."""
    fig = Figure(figsize=(WIDTH, 3.6), layout="tight")
    ax = fig.add_subplot()
    top = []
    for r, color, m in curves(runs, metrics):
        xs = m.elapsed_s / 3600 if x == "hours" else m.microbatch_steps
        ax.plot(xs, m.loss, color=color, lw=1.2, label=r.label)
        top.append(m.loss.iloc[len(m) // 20 :].max())  # ignore the first 5 %: the drop from ~10 would flatten the rest
    if top and np.isfinite(np.nanmax(top)):
        ax.set_ylim(top=np.nanmax(top) * 1.02)
    ax.set_xlabel("wall-clock training time (hours)" if x == "hours" else "microbatch steps")
    ax.set_ylabel("MLM loss")
    ax.grid(alpha=0.3)
    ax.legend(title="block", fontsize="small")
    return save(fig, out, f"loss_vs_{x}")


def schedule_plot(runs: pd.DataFrame, metrics: pd.DataFrame, out: Path) -> list[Path]:
    """Learning rate (top) and effective batch size (bottom) against wall-clock hours."""
    fig = Figure(figsize=(WIDTH, 4.8), layout="tight")
    lr_ax, bs_ax = fig.subplots(2, 1, sharex=True)
    for r, color, m in curves(runs, metrics):
        hours = m.elapsed_s / 3600
        lr_ax.plot(hours, m.lr, color=color, lw=1.2, label=r.label)
        bs_ax.plot(hours, m.batch_size, color=color, lw=1.2, label=r.label)
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    bs_ax.set_ylabel("batch size (sequences)")
    bs_ax.set_xlabel("wall-clock training time (hours)")
    for ax in (lr_ax, bs_ax):
        ax.grid(alpha=0.3)
    lr_ax.legend(title="block", fontsize="small")
    return save(fig, out, "schedule")


def glue_plot(runs: pd.DataFrame, glue: pd.DataFrame, out: Path, published: dict[str, pd.Series]) -> list[Path]:
    """Per-task score, mean with std over seeds as error bars, one colour per run; x marks the paper's number."""
    labels = [c.label for c in COLUMNS]
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(len(runs), 1)
    for i, (name, r) in enumerate(runs.iterrows()):
        color, offset = COLORS[i % len(COLORS)], (i - (len(runs) - 1) / 2) * width
        scores = glue[glue.run == name].set_index("column").reindex(labels)
        xs = np.arange(len(labels)) + offset
        std = pd.to_numeric(scores["std"]).to_numpy(float)  # None (one seed: no std) -> NaN: no error bar drawn
        ax.errorbar(
            xs,
            pd.to_numeric(scores["mean"]).to_numpy(float),
            yerr=std,
            fmt="o",
            ms=4,
            capsize=2.5,
            color=color,
            label=r.label,
        )
        if r.block in published:
            ax.plot(xs, [published[r.block][c] for c in labels], "x", color=color, ms=5)
    handles, names = ax.get_legend_handles_labels()
    if any(r.block in published for _, r in runs.iterrows()):
        handles.append(Line2D([], [], color="black", marker="x", ls=""))
        names.append("published (He & Hofmann 2023)")
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel("validation score (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(handles, names, fontsize="small", ncols=min(len(handles), 4), loc="outside upper center")
    return save(fig, out, "glue_tasks")
