"""A report from run folders: Table 1 (GLUE average and its difference to Pre-LN with a Welch interval,
parameters, speed vs Pre-LN two ways, held-out MLM loss), Table 2 (GLUE per task, differences to Pre-LN with
Welch intervals), Table 3 (paired bootstrap over validation examples) as Markdown, LaTeX and CSV; loss and
schedule curves, GLUE per task, GLUE across the budget, the inside of the blocks per run and at init as PNG
and PDF; all tied together in index.md, with warnings where compared runs differ in what makes a comparison
fair. Replicate runs (differing only in train.seed) are one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError
from ..hardware import recorded_line
from ..model import BLOCKS, ArchConfig, arch_config, recorded_block
from ..model.diagnostics import at_init
from ..model.registry import EMBEDDED_SOURCE, BlockSourceChanged
from ..reference import PAPER, load_reference, published_rows
from ..runtime import read_json
from . import paired, plots, render, tables
from .budgets import calibration_warnings, check_budgets
from .load import Runs, load_runs, replicates

# Run facts that make comparisons unfair when they differ: (column(s), what it is, what it breaks).
COMPARED = (
    (("budget", "budget_hours"), "budget", "speed ratios and losses across budgets are not comparable"),
    (
        ("reference_name",),
        "budget reference device (--reference; none: plain hours)",
        "they trained different amounts: losses and GLUE scores are not comparable",
    ),
    (("device",), "hardware (device)", "speed ratios across hardware are not comparable"),
    (("world_size",), "world size", "speed ratios across world sizes are not comparable"),
    (("microbatch",), "microbatch", "microbatch steps of different sizes are not comparable"),
    (("data_source", "data_name", "data_hash"), "pretraining data", "losses and GLUE scores are not comparable"),
    (("glue_protocol", "glue_protocol_hash"), "GLUE protocol", "GLUE scores are not comparable"),
    (
        ("profile",),
        "pretraining profile (docs/recipe.md, Two profiles)",
        "differences between them mix the blocks with the recipes",
    ),
    (("glue_profile",), "GLUE profile (docs/recipe.md, Two profiles)", "GLUE differences mix blocks and recipes"),
)


def run_blocks(runs, warnings: list[str]) -> dict[str, str]:
    """The runs' own blocks (not built in), loaded again for the at-init figure: {reference: title}.

    A block whose source changed since its run was pretrained stops the report (one line, as glue and --resume
    do); one that cannot be found here is left out of the figure with a warning (the tables need only the runs'
    numbers)."""
    out = {}
    for _, r in runs[~runs.block.isin(list(BLOCKS)) & runs.block.notna()].iterrows():
        if r.block in out:
            continue
        source = r.get("block_source") if isinstance(r.get("block_source"), dict) else None
        try:
            spec = recorded_block(r.block, source, Path(r.dir) / "model" / EMBEDDED_SOURCE)
        except BlockSourceChanged as err:
            raise BlockSourceChanged(f"run {r['name']}: {err}") from None
        except ConfigError as err:
            warnings.append(f"run {r['name']}: its block is left out of the at-init figure ({err})")
            continue
        out[spec.ref] = spec.title
    return out


def comparison_warnings(runs) -> list[str]:
    out = []
    for columns, what, consequence in COMPARED:
        # runs that do not record a fact (no GLUE run yet, an older summary) cannot disagree on it
        values = {
            name: " / ".join(tables.joined(r[c], " + ") if isinstance(r[c], tuple) else str(r[c]) for c in columns)
            for name, r in runs.iterrows()
            if not all(tables.missing(r[c]) for c in columns)
        }
        if len(set(values.values())) > 1:
            listed = ", ".join(f"{name}: {v}" for name, v in values.items())
            out.append(f"runs differ in {what} ({listed}): {consequence}")
    out += calibration_warnings(runs)
    for name, r in runs.iterrows():
        if r.summary_problem:
            continue  # warned about when loading
        if not r.completed:
            out.append(
                f"run {name} has not completed (stop reason: {r.stop_reason}): its numbers are not the full budget's"
            )
        moved = [h for h in r.hardware if isinstance(h, dict)]
        if len({h.get("device") for h in moved}) > 1:
            where = ", ".join(f"{h.get('device')} from step {h.get('from_step')}" for h in moved)
            out.append(f"run {name} changed hardware mid-budget ({where}): its speed and budget mix devices")
        if len(r.glue_protocol_hash or ()) > 1:
            out.append(f"run {name} mixes GLUE protocols ({r.glue_protocol}): its GLUE scores are not one protocol's")
        if len(r.glue_models) > 1:
            out.append(
                f"run {name} has GLUE results of different models (model hashes {' + '.join(r.glue_models)}): re-run "
                "GLUE on "
                "its current model"
            )
    return out


def run_line(r) -> str:
    glue = (
        f"{r.glue_protocol} (hash {tables.joined(r.glue_protocol_hash, ' + ')}, profile {r.glue_profile}), seeds "
        f"{tables.joined(r.glue_seeds)}"
        if r.glue_seeds
        else "not run"
    )
    state = "completed" if r.completed else f"**not completed** (stop reason: {r.stop_reason})"
    hours = "?" if tables.missing(r.budget_hours) else f"{r.budget_hours:g} h"
    if isinstance(r.reference, dict) and not tables.missing(r.budget_hours):
        hours = recorded_line(r.reference, r.budget_hours)
    profile = "unknown" if tables.missing(r.profile) else r.profile  # no config.yaml to read it from
    return (
        f"- **{r.name}** ({r.title}): profile {profile}, device {r.device}, budget {r.budget} ({hours}), "
        f"data {r.data_source}/{r.data_name} (hash {r.data_hash}), world size {r.world_size}{where(r)}, "
        f"precision {r.precision}, "
        f"microbatch {r.microbatch}; GLUE protocol {glue}; {state}"
    )


def where(r) -> str:
    """` on node N (Slurm job J)`: where a run last trained, when its summary says."""
    node = "" if tables.missing(r.get("node")) else f" on node {r.node}"
    return node + ("" if tables.missing(r.get("slurm_job")) else f" (Slurm job {r.slurm_job})")


def index(
    loaded: Runs,
    warnings: list[str],
    table_files: dict[str, list[Path]],
    figures: dict[str, str],
    reference: str,
    bootstrap: int = paired.REPLICATES,
) -> str:
    lines = ["# cramming-simple report", "", "## Runs", "", *(run_line(r) for _, r in loaded.runs.iterrows()), ""]
    if warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in warnings), ""]
    if reference != "none":
        lines += [
            f"Rows labelled *published* are numbers from the papers (`reports/reference/{reference}_*.csv`); "
            "Δ columns and rows are your number minus the paper's for the same block.",
            "",
        ]
    titles = {
        "table1": "Table 1: GLUE average, size and speed",
        "table2": "Table 2: GLUE per task (mean over seeds)",
        "table3": "Table 3: differences to Pre-LN, paired bootstrap over validation examples",
    }
    explain = {
        "table1": "*vs Pre-LN*: GLUE average minus the Pre-LN run's with the same budget, hardware and GLUE "
        "protocol, with a 95 % Welch interval over fine-tuning seeds (pretraining x fine-tuning seeds for "
        "replicates). *Speed*: microbatch steps per training second / Pre-LN's (the paper's step ratio when no run "
        "is capped); *Speed (tok/s)*: median tokens/s over log windows / Pre-LN's. *MLM loss*: held-out loss of the "
        "final model. *(capped)*: a train.* cap stopped the run before its budget.",
        "table2": "*Δ vs … (95 % CI)* rows: the difference to the Pre-LN run, ± the half-width of a 95 % Welch "
        "interval over seeds.",
        "table3": "Each cell: the difference in the metric (percent points), with the 2.5 / 97.5 percentiles of "
        f"{bootstrap} paired bootstrap replicates over validation examples (seeded): the interval a "
        "reviewer asks for when seeds are few.",
    }
    for stem, paths in table_files.items():
        links = ", ".join(f"[{p.suffix[1:]}]({p.name})" for p in paths)
        lines += [f"## {titles[stem]}", "", explain[stem], "", f"Files: {links}", "", paths[0].read_text(), ""]
    lines += ["## Figures", ""]
    for stem, caption in figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({stem}.png)", "", f"[PDF]({stem}.pdf)", ""]
    return "\n".join(lines)


@dataclass
class Report:
    loaded: Runs
    warnings: list[str]
    tables: dict[str, list[Path]]  # table1 / table2 -> [md, tex, csv]
    figures: dict[str, str] = field(default_factory=dict)  # file stem -> caption
    index: Path | None = None


def write_report(
    run_dirs: list[Path],
    out: Path,
    reference: str = PAPER,
    bootstrap: int = paired.REPLICATES,
    latex: str = "full",
    resize: bool = False,
    bench: Path | None = None,
    mixed_budgets: bool = False,
) -> Report:
    """Load the runs, write the tables, the figures and index.md into `out`. latex: the style of the .tex tables
    (full | compact); resize: each tabular in a \\resizebox to the line width; bench: a bench.json whose paired
    speed ratios (with their intervals) Table 1's speed footnote cites; mixed_budgets: allow runs of different
    budget references in one table (`check_budgets`)."""
    loaded = load_runs(run_dirs)
    mixed = check_budgets(loaded.runs, mixed_budgets)
    groups, pooled = replicates(loaded.runs, loaded.glue, loaded.warnings)
    t1_ref, t2_ref = load_reference(reference) if reference != "none" else (None, None)
    out.mkdir(parents=True, exist_ok=True)
    table1 = tables.table1(groups, loaded.problems, t1_ref)
    if mixed:
        table1.notes.mark(mixed, [])
    if bench is not None:
        table1.notes.mark(bench_note(bench), [])
    report = Report(
        loaded,
        loaded.warnings + comparison_warnings(loaded.runs),
        {
            "table1": render.write(table1, out, "table1", latex, resize),
            "table2": render.write(
                tables.table2(groups, pooled, loaded.problems, t2_ref), out, "table2", latex, resize
            ),
        },
    )
    run_dirs_by_name = {name: Path(r.dir) for name, r in loaded.runs.iterrows()}
    table3 = paired.paired_table(groups, run_dirs_by_name, replicates=bootstrap)
    if not table3.shown.empty:
        report.tables["table3"] = render.write(table3, out, "table3", latex, resize)
    report.figures |= write_figures(loaded, out, t2_ref, report.warnings)
    report.index = out / "index.md"
    report.index.write_text(index(loaded, report.warnings, report.tables, report.figures, reference, bootstrap))
    return report


def bench_note(path: Path) -> str:
    """Table 1's footnote on speed: the side-by-side bench's paired ratios to Pre-LN with their 95 % intervals."""
    try:
        result = read_json(path)
        rows, s = result["rows"], result["settings"]
    except (OSError, KeyError, TypeError) as err:
        raise ConfigError(f"--bench {path}: not a bench.json written by `cramming-simple bench` ({err})") from None
    cells = []
    for r in rows[1:]:
        if r.get("paired_ratio") is None:  # an older bench.json: the ratio of median tokens/s, no interval
            cells.append(f"{r['title']} {r['ratio_vs_preln']:.2f}")
        else:
            cells.append(f"{r['title']} {r['paired_ratio']:.2f} [{r['paired_low']:.2f}, {r['paired_high']:.2f}]")
    return (
        f"measured side by side in one process ({path}, {result['date']}, {result['device']}, arch {s['arch']}, "
        f"batch {s['batch']}, {s['precision']}, {s['steps']} rounds): speed vs {rows[0]['title']} (95 % interval, "
        f"paired bootstrap over rounds): {'; '.join(cells)}"
    )


def write_figures(loaded: Runs, out: Path, t2_ref, warnings: list[str]) -> dict[str, str]:
    """Every figure of the report; returns {file stem: caption}."""
    figures = {}
    if "loss" in loaded.metrics:
        plots.loss_plot(loaded.runs, loaded.metrics, out, "hours")
        plots.loss_plot(loaded.runs, loaded.metrics, out, "steps")
        plots.schedule_plot(loaded.runs, loaded.metrics, out)
        figures |= {
            "loss_vs_hours": "MLM loss against wall-clock time (paper Fig. 7)",
            "loss_vs_steps": "MLM loss against microbatch steps (paper Fig. 24)",
            "schedule": "Learning rate and batch size against time",
        }
    if loaded.glue["n"].sum() > 0:
        plots.glue_plot(loaded.runs, loaded.glue, out, published_rows(t2_ref))
        figures["glue_tasks"] = "GLUE per task (mean and std over seeds)"
    if not loaded.budget_glue.empty:
        plots.budget_glue_plot(loaded.runs, loaded.budget_glue, out)
        figures["glue_vs_budget"] = "GLUE average against the fraction of the budget (snapshots, glue --at)"
    for name, rows in loaded.diagnostics.items():
        if rows:
            label = loaded.runs.loc[name, "label"]
            figures[plots.diagnostics_plot(name, label, rows, out)] = f"{label}: inside the blocks over training"
            stem = plots.scalars_plot(name, label, rows, out)
            if stem:
                figures[stem] = f"{label}: learned scalars per layer"
    arch = next((a for a in loaded.runs.arch if isinstance(a, dict)), None)
    cfg = ArchConfig.from_dict(arch) if arch else arch_config("tiny")
    titles = {name: spec.title for name, spec in BLOCKS.items()} | run_blocks(loaded.runs, warnings)
    plots.signal_plot({titles[b]: m for b, m in at_init(cfg, list(titles)).items()}, cfg.seq_len, out)
    figures["signal_at_init"] = (
        f"Every block (and the runs' own blocks) at init ({'the runs' if arch else 'tiny'} arch, random tokens): "
        "token cosine similarity through depth, attention entropy relative to uniform"
    )
    return figures
