"""The report's figures, each written as PNG and PDF: MLM loss (training, and held-out dashed) against
wall-clock hours (paper Fig. 7) and against microbatch steps (Fig. 24), the learning-rate and batch-size
schedules, GLUE per task, GLUE average against budget fraction, the inside of the blocks of each run over
training (layer x time heatmaps, learned scalars per layer), and every block at init (signal propagation).

PDFs embed TrueType (Type 42) fonts, not matplotlib's default Type 3 (`PDF_FONTS`); time axes read in minutes
below an hour. Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global state and no GUI
backend (saving goes through Agg), so reports render on headless machines and inside tests.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ..glue.tasks import COLUMNS

WIDTH = 5.5  # inches: fits a single paper column at full text width without rescaling the fonts much
COLORS = [f"C{i}" for i in range(10)]
COLORMAP = matplotlib.colormaps["viridis"]


# TrueType (Type 42) fonts in PDFs: many venues reject the Type 3 fonts matplotlib embeds by default.
PDF_FONTS = {"pdf.fonttype": 42, "ps.fonttype": 42}


def save(fig: Figure, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    with matplotlib.rc_context(PDF_FONTS):  # read when the PDF is written, not when the figure is built
        fig.savefig(paths[0], dpi=200)
        fig.savefig(paths[1], metadata={"CreationDate": None})  # no timestamp: same inputs, same file
    return paths


def time_unit(seconds: float) -> tuple[float, str]:
    """(divisor, unit) for a time axis that runs to `seconds`: minutes below one hour, hours from there on."""
    return (60.0, "minutes") if seconds < 3600 else (3600.0, "hours")


def few_ticks(*axes) -> None:
    """At most 6 major ticks on each x axis, at round values: labels never run into each other at WIDTH."""
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))


def curves(runs: pd.DataFrame, metrics: pd.DataFrame, kind: str = "train"):
    """(run row, colour, its finite metrics rows of `kind`: train log windows or held-out evals) per run."""
    column = "loss" if kind == "train" else "eval_loss"
    for i, (name, r) in enumerate(runs.iterrows()):
        m = metrics[metrics.run == name] if "run" in metrics else metrics.iloc[:0]
        m = m[m["kind"].fillna("train") == kind] if "kind" in m else (m if kind == "train" else m.iloc[:0])
        if column in m and not m[column].isna().all():
            yield r, COLORS[i % len(COLORS)], m.replace([np.inf, -np.inf], np.nan)


def loss_plot(runs: pd.DataFrame, metrics: pd.DataFrame, out: Path, x: str) -> list[Path]:
    return save(loss_figure(runs, metrics, x), out, f"loss_vs_{x}")


def loss_figure(runs: pd.DataFrame, metrics: pd.DataFrame, x: str) -> Figure:
    """MLM loss against x = 'hours' (elapsed wall-clock, in minutes when the runs are shorter than an hour) or
    'steps' (microbatch steps): training loss solid, held-out loss dashed with markers."""
    fig = Figure(figsize=(WIDTH, 3.6), layout="tight")
    ax = fig.add_subplot()
    divisor, unit = time_unit(float(metrics.elapsed_s.max()) if "elapsed_s" in metrics else 0.0)
    top = []
    for r, color, m in curves(runs, metrics):
        xs = m.elapsed_s / divisor if x == "hours" else m.microbatch_steps
        ax.plot(xs, m.loss, color=color, lw=1.2, label=r.label)
        top.append(m.loss.iloc[len(m) // 20 :].max())  # ignore the first 5 %: the drop from ~10 would flatten the rest
    held_out = False
    for _, color, m in curves(runs, metrics, kind="eval"):
        xs = m.elapsed_s / divisor if x == "hours" else m.microbatch_steps
        ax.plot(xs, m.eval_loss, color=color, lw=1.0, ls="--", marker=".", ms=4)
        held_out = True
    if held_out:
        ax.plot([], [], color="black", ls="--", marker=".", label="held-out (dashed)")
    if top and np.isfinite(np.nanmax(top)):
        ax.set_ylim(top=np.nanmax(top) * 1.02)
    ax.set_xlabel(f"wall-clock training time ({unit})" if x == "hours" else "microbatch steps")
    ax.set_ylabel("MLM loss")
    few_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend(title="block", fontsize="small")
    return fig


def schedule_plot(runs: pd.DataFrame, metrics: pd.DataFrame, out: Path) -> list[Path]:
    return save(schedule_figure(runs, metrics), out, "schedule")


def schedule_figure(runs: pd.DataFrame, metrics: pd.DataFrame) -> Figure:
    """Learning rate (top) and effective batch size (bottom) against wall-clock time."""
    fig = Figure(figsize=(WIDTH, 4.8), layout="tight")
    lr_ax, bs_ax = fig.subplots(2, 1, sharex=True)
    divisor, unit = time_unit(float(metrics.elapsed_s.max()) if "elapsed_s" in metrics else 0.0)
    for r, color, m in curves(runs, metrics):
        lr_ax.plot(m.elapsed_s / divisor, m.lr, color=color, lw=1.2, label=r.label)
        bs_ax.plot(m.elapsed_s / divisor, m.batch_size, color=color, lw=1.2, label=r.label)
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    bs_ax.set_ylabel("batch size (sequences)")
    bs_ax.set_xlabel(f"wall-clock training time ({unit})")
    few_ticks(lr_ax, bs_ax)
    for ax in (lr_ax, bs_ax):
        ax.grid(alpha=0.3)
    lr_ax.legend(title="block", fontsize="small")
    return fig


# GLUE metrics by kind: one panel each, so MCC, Pearson, F1 and accuracy never share an unlabelled axis.
METRIC_AXES = {
    "accuracy": "accuracy (%)",
    "f1": "F1 (%)",
    "pearson": "Pearson r (x100)",
    "matthews": "Matthews corr. (x100)",
}


def glue_plot(runs: pd.DataFrame, glue: pd.DataFrame, out: Path, published: dict[str, pd.Series]) -> list[Path]:
    return save(glue_figure(runs, glue, published), out, "glue_tasks")


def glue_figure(runs: pd.DataFrame, glue: pd.DataFrame, published: dict[str, pd.Series]) -> Figure:
    """Per-task score, mean with std over seeds as error bars, one colour per run, one panel per kind of metric
    (its name on the panel's axis); x marks the paper's number."""
    kinds = {
        metric: [c.label for c in COLUMNS if c.metric == metric] for metric in dict.fromkeys(c.metric for c in COLUMNS)
    }
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    axes = fig.subplots(1, len(kinds), width_ratios=[len(labels) + 0.6 for labels in kinds.values()])
    width = 0.8 / max(len(runs), 1)
    for ax, (metric, labels) in zip(axes, kinds.items()):
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
        ax.set_xticks(np.arange(len(labels)), labels, fontsize="x-small")
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_ylabel(METRIC_AXES.get(metric, metric), fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if any(r.block in published for _, r in runs.iterrows()):
        handles.append(Line2D([], [], color="black", marker="x", ls=""))
        names.append("published (He & Hofmann 2023)")
    fig.legend(handles, names, fontsize="small", ncols=min(len(handles), 4), loc="outside upper center")
    return fig


def file_stem(prefix: str, name: str) -> str:
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}"


STATS = (  # (key, title, log scale)
    ("cos", "token cosine similarity", False),
    ("kurtosis", "kurtosis (outliers)", True),
    ("entropy", "attention entropy (nats)", False),
    ("norm", "residual norm", True),
)


def layer_grid(rows: list[dict], key: str) -> np.ndarray:
    """(layers, eval points) of one statistic; lists (per head) are averaged; missing values are NaN."""
    depth = max(len(r["layers"]) for r in rows)
    grid = np.full((depth, len(rows)), np.nan)
    for j, row in enumerate(rows):
        for i, layer in enumerate(row["layers"]):
            value = layer.get(key, layer.get("scalars", {}).get(key))
            if value is not None:
                grid[i, j] = float(np.mean(value))
    return grid


def diagnostics_plot(name: str, label: str, rows: list[dict], out: Path) -> str:
    """Layer x budget-fraction heatmaps of the residual-stream statistics and attention entropy of one run."""
    fig = Figure(figsize=(WIDTH * 1.3, 5.0), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, sharey=True).ravel()
    p = np.array([r.get("p", 0.0) for r in rows])
    for ax, (key, title, log) in zip(axes, STATS):
        grid = layer_grid(rows, key)
        values = np.log10(np.maximum(grid, 1e-12)) if log else grid
        mesh = ax.pcolormesh(p, np.arange(grid.shape[0]), values, shading="nearest", cmap="viridis")
        fig.colorbar(mesh, ax=ax, label=("log10 " if log else "") + title)
        ax.set_title(title, fontsize="small")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[2:]:
        ax.set_xlabel("fraction of the budget")
    for ax in axes[::2]:
        ax.set_ylabel("layer")
    fig.suptitle(f"{label}: inside the blocks on a held-out batch", fontsize="medium")
    stem = file_stem("diagnostics", name)
    save(fig, out, stem)
    return stem


def scalars_plot(name: str, label: str, rows: list[dict], out: Path) -> str | None:
    """Every learned scalar of the blocks (per-head gains averaged over heads) against the budget fraction, one
    line per layer."""
    keys = sorted({k for row in rows for layer in row["layers"] for k in layer.get("scalars", {})})
    if not keys:
        return None
    cols = min(4, len(keys))
    fig = Figure(figsize=(WIDTH * 1.3, 1.9 * math.ceil(len(keys) / cols) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(math.ceil(len(keys) / cols), cols, sharex=True, squeeze=False)).ravel()
    p = np.array([r.get("p", 0.0) for r in rows])
    for ax, key in zip(axes, keys):
        grid = layer_grid(rows, key)
        for i, line in enumerate(grid):
            if not np.isnan(line).all():
                ax.plot(p, line, lw=1.0, color=COLORMAP(i / max(len(grid) - 1, 1)))
        ax.set_title(key, fontsize="x-small")
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{label}: learned scalars per layer (dark: first layer, light: last)", fontsize="medium")
    stem = file_stem("scalars", name)
    save(fig, out, stem)
    return stem


def signal_plot(at_init: dict[str, dict], seq_len: int, out: Path) -> list[Path]:
    """Every block at init: token cosine similarity through depth (0: the embedding) and the attention
    entropy relative to uniform attention's (log T) per layer: the paper's signal-propagation view."""
    fig = Figure(figsize=(WIDTH * 1.3, 3.2), layout="constrained")
    cos_ax, ent_ax = fig.subplots(1, 2)
    for i, (title, measured) in enumerate(at_init.items()):
        cos = [measured["embedding"]["cos"]] + [layer["cos"] for layer in measured["layers"]]
        entropy = [np.mean(layer["entropy"]) / math.log(seq_len) for layer in measured["layers"] if "entropy" in layer]
        color = COLORS[i % len(COLORS)]
        cos_ax.plot(range(len(cos)), cos, marker=".", color=color, label=title)
        ent_ax.plot(range(1, len(entropy) + 1), entropy, marker=".", color=color, label=title)
    cos_ax.set_xlabel("depth (0: embedding)")
    cos_ax.set_ylabel("token cosine similarity")
    ent_ax.set_xlabel("layer")
    ent_ax.set_ylabel("attention entropy / log T")
    for ax in (cos_ax, ent_ax):
        ax.grid(alpha=0.3)
    cos_ax.legend(fontsize="x-small")
    return save(fig, out, "signal_at_init")


def block_signal_plot(profiles: dict[str, dict], out: Path) -> list[Path]:
    """check-block's figure: token cosine similarity and residual-stream norm (over the embedding's: the growth the
    card checks) against depth at init, one line per block ({ref: {title, cos, norm}}; the checked block first,
    drawn thicker and on top)."""
    fig = Figure(figsize=(WIDTH * 1.3, 3.0), layout="constrained")
    cos_ax, norm_ax = fig.subplots(1, 2)
    for i, p in enumerate(profiles.values()):
        style = {"color": COLORS[i % len(COLORS)], "label": p["title"], "lw": 2.6 if i == 0 else 1.2}
        style |= {"zorder": 3 if i == 0 else 2, "marker": "o" if i == 0 else ".", "ms": 3}
        cos_ax.plot(range(len(p["cos"])), p["cos"], **style)
        norm_ax.plot(range(len(p["norm"])), np.asarray(p["norm"]) / p["norm"][0], **style)
    cos_ax.set_ylabel("token cosine similarity")
    cos_ax.set_ylim(min(0.0, cos_ax.get_ylim()[0]), 1.02)
    norm_ax.set_ylabel("residual-stream norm / embedding's")
    for ax in (cos_ax, norm_ax):
        ax.set_xlabel("depth (0: embedding)")
        ax.grid(alpha=0.3)
    cos_ax.legend(fontsize="x-small")
    return save(fig, out, "signal")


def budget_glue_plot(runs: pd.DataFrame, budget_glue: pd.DataFrame, out: Path) -> list[Path]:
    """GLUE average (mean and std over seeds) against the fraction of the budget a snapshot was kept at."""
    fig = Figure(figsize=(WIDTH, 3.4), layout="tight")
    ax = fig.add_subplot()
    for i, (name, r) in enumerate(runs.iterrows()):
        points = budget_glue[budget_glue.run == name].sort_values("fraction")
        if points.empty:
            continue
        std = pd.to_numeric(points["std"]).to_numpy(float)
        ax.errorbar(
            points.fraction,
            points["mean"],
            yerr=std,
            marker="o",
            ms=4,
            capsize=2.5,
            color=COLORS[i % 10],
            label=r.label,
        )
    ax.set_xlabel("fraction of the pretraining budget")
    ax.set_ylabel("GLUE average")
    ax.grid(alpha=0.3)
    ax.legend(title="block", fontsize="small")
    return save(fig, out, "glue_vs_budget")
