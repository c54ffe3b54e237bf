"""Tables 1 and 2 (docs/recipe.md) as Markdown, LaTeX (booktabs) and CSV.

Each table is built once as two frames: `data` holds the numbers at full precision (the CSV) and `shown` the
same numbers rounded once to text (Markdown and LaTeX), so the three formats cannot disagree. A dash is a
missing number and carries a numbered footnote saying why. Published rows are labelled as published.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..glue.tasks import COLUMNS
from ..markdown import table as markdown_table
from ..model import BLOCKS
from ..reference import BASELINE, published_rows
from .load import describe_problems

# What must match for microbatch steps to be comparable: same budget, same hardware, same microbatch.
SPEED_KEY = ("budget", "budget_hours", "device", "world_size", "microbatch")
TEXT_COLUMNS = ("Block", "Run")


@dataclass
class Table:
    data: pd.DataFrame  # numbers at full precision, one row per shown row, plus the footnote texts per row
    shown: pd.DataFrame  # the same rows as rounded text
    notes: list[str]  # footnote [i] is notes[i - 1]
    first_published: int | None  # row where the published rows start (a \midrule in LaTeX)


class Notes(list):
    """Numbered footnotes, each text once; `mark` also records the text on the row it explains."""

    def mark(self, text: str, row: list[str]) -> str:
        if text not in self:
            self.append(text)
        if text not in row:
            row.append(text)
        return f" [{self.index(text) + 1}]"


def missing(value) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def fmt(value, spec: str) -> str:
    """A number as text; '' when there is none (not applicable: missing numbers of runs get a dash)."""
    return "" if missing(value) else format(value, spec)


def same(a, b) -> bool:
    return (missing(a) and missing(b)) or a == b


def speed_baseline(run: pd.Series, runs: pd.DataFrame) -> tuple[str | None, str | None]:
    """The Pre-LN run whose microbatch steps this run's are divided by (or None), and a note (or None)."""
    if run.summary_problem:
        return None, summary_note(run)
    prelns = runs[(runs.block == BASELINE) & (runs.summary_problem == "")]
    if prelns.empty:
        return (
            None,
            "no Pre-LN run among the compared runs: speed is relative to Pre-LN on the same budget and hardware",
        )
    if not run.completed:
        return None, f"{run.name} did not complete: its microbatch steps do not fill the budget"
    matching = prelns[[all(same(p[k], run[k]) for k in SPEED_KEY) for _, p in prelns.iterrows()]]
    if matching.empty:
        return None, f"{run.name}: no Pre-LN run with the same budget, device, world size and microbatch"
    base = matching.iloc[-1]
    if not base.completed:
        return None, f"the Pre-LN run {base.name} did not complete: its microbatch steps do not fill the budget"
    if len(matching) > 1:
        return (
            base.name,
            f"{run.name}: several Pre-LN runs share its budget and hardware; speed is relative to the last listed, "
            f"{base.name}",
        )
    return base.name, None


def summary_note(run: pd.Series) -> str:
    return f"{run.name}: summary.json is unreadable, pretraining numbers missing ({run.summary_problem})"


def glue_note(run: pd.Series, problems: pd.DataFrame) -> str:
    mine = problems[problems.run == run.name]
    if not run.glue_seeds:
        return f"{run.name}: GLUE not run"
    return f"{run.name}: no GLUE average ({describe_problems(mine) if not mine.empty else run.glue_missing})"


def glue_cell(run: pd.Series, problems: pd.DataFrame, notes: Notes, row_notes: list[str]) -> str:
    if missing(run.glue_mean):
        return "-" + notes.mark(glue_note(run, problems), row_notes)
    if run.glue_n == 1:  # a standard deviation over one seed would read as a perfectly stable result
        return f"{run.glue_mean:.1f}" + notes.mark(f"{run.name}: one seed only, no std", row_notes)
    return f"{run.glue_mean:.1f} ± {run.glue_std:.1f}"


def with_int_columns(data: list[dict], columns: list[str]) -> pd.DataFrame:
    """Counts as nullable integers, so the CSV says 800, not 800.0, and a missing count stays empty."""
    frame = pd.DataFrame(data)
    for c in columns:
        if c in frame:
            frame[c] = frame[c].astype("Int64")
    return frame


def table1(runs: pd.DataFrame, problems: pd.DataFrame, reference: pd.DataFrame | None) -> Table:
    """Block, GLUE average (mean ± std over seeds), parameters, microbatch steps, speed vs Pre-LN, MLM loss."""
    notes, paper = Notes(), published_rows(reference)
    data, shown = [], []
    for name, r in runs.iterrows():
        row_notes: list[str] = []
        base, speed_note = speed_baseline(r, runs)
        speed = r.microbatch_steps / runs.microbatch_steps[base] if base else None
        d = {
            "kind": "run",
            "block": r.block,
            "title": r.title,
            "run": name,
            "glue_mean": r.glue_mean,
            "glue_std": r.glue_std,
            "glue_n": r.glue_n,
            "params_m": None if missing(r.params) else r.params / 1e6,
            "microbatch_steps": r.microbatch_steps,
            "speed": speed,
            "speed_baseline": base,
            "final_loss": r.final_loss,
        }
        s = {
            "Block": r.title,
            "Run": name
            + (
                notes.mark(summary_note(r), row_notes)
                if r.summary_problem
                else ""
                if r.completed
                else notes.mark(f"{name} did not complete (stop reason: {r.stop_reason})", row_notes)
            ),
            "GLUE": glue_cell(r, problems, notes, row_notes),
            "Params (M)": fmt(d["params_m"], ".1f"),
            "Microbatch steps": fmt(r.microbatch_steps, ".0f"),
            "Speed": ("-" if speed is None else f"{speed:.2f}")
            + (notes.mark(speed_note, row_notes) if speed_note else ""),
            "MLM loss": fmt(r.final_loss, ".3f") or "-",
        }
        if reference is not None:
            p = paper.get(r.block)
            d["delta_glue"] = r.glue_mean - p.glue_mean if p is not None and not missing(r.glue_mean) else None
            d["delta_speed"] = speed - p.speed if p is not None and speed is not None else None
            s["Δ GLUE"], s["Δ speed"] = fmt(d["delta_glue"], "+.1f"), fmt(d["delta_speed"], "+.2f")
        data.append({**d, "notes": "; ".join(row_notes)})
        shown.append(s)

    first_published = len(shown) if reference is not None else None
    for _, p in reference.iterrows() if reference is not None else ():
        row_notes = []
        glue_missing = missing(p.glue_mean)
        note = notes.mark(p.note, row_notes) if p.note else ""
        data.append(
            {
                "kind": "published",
                "block": p.block,
                "title": BLOCKS[p.block].title,
                "run": p.label,
                "glue_mean": p.glue_mean,
                "glue_std": p.glue_std,
                "params_m": p.params_m,
                "speed": p.speed,
                "notes": "; ".join(row_notes),
            }
        )
        glue = "-" if glue_missing else f"{p.glue_mean:.1f}" + ("" if missing(p.glue_std) else f" ± {p.glue_std:.1f}")
        shown.append(
            {
                "Block": BLOCKS[p.block].title,
                "Run": p.label + ("" if glue_missing else note),
                "GLUE": glue + (note if glue_missing else ""),
                "Params (M)": fmt(p.params_m, ".0f"),
                "Microbatch steps": "",
                "Speed": fmt(p.speed, ".2f"),
                "MLM loss": "",
                "Δ GLUE": "",
                "Δ speed": "",
            }
        )
    return Table(with_int_columns(data, ["glue_n", "microbatch_steps"]), pd.DataFrame(shown), notes, first_published)


def table2(runs: pd.DataFrame, glue: pd.DataFrame, problems: pd.DataFrame, reference: pd.DataFrame | None) -> Table:
    """Per-task GLUE scores (mean over seeds; std and seed count in the CSV), with deltas to the paper."""
    notes, paper = Notes(), published_rows(reference)
    data, shown = [], []
    for name, r in runs.iterrows():
        row_notes: list[str] = []
        scores = glue[glue.run == name].set_index("column")
        d = {"kind": "run", "block": r.block, "title": r.title, "run": name}
        s = {"Block": r.title, "Run": name}
        seeds = len(r.glue_seeds.split(",")) if r.glue_seeds else 0
        for c in COLUMNS:
            mean, std, n = scores.loc[c.label, ["mean", "std", "n"]]
            n = int(n)
            d[c.label], d[f"{c.label} std"], d[f"{c.label} n"] = mean, std, n
            bad = problems[(problems.run == name) & (problems.task == c.task)]
            if not seeds:
                s[c.label] = "-" + notes.mark(f"{name}: GLUE not run", row_notes)
            elif n == seeds:
                s[c.label] = f"{mean:.1f}"
            else:
                why = f"{name}, " + (
                    describe_problems(bad) if not bad.empty else f"{c.label}: no {c.metric} in {seeds - n} seed file(s)"
                )
                s[c.label] = (
                    "-" + notes.mark(why, row_notes)
                    if n == 0
                    else f"{mean:.1f}" + notes.mark(f"{why}; mean of the other {n} seed(s)", row_notes)
                )
        data.append({**d, "notes": "; ".join(row_notes)})
        shown.append(s)
        p = paper.get(r.block)
        if p is not None:  # the delta row sits right under its run
            deltas = {c.label: None if missing(d[c.label]) else d[c.label] - p[c.label] for c in COLUMNS}
            data.append(
                {
                    "kind": "delta",
                    "block": r.block,
                    "title": r.title,
                    "run": f"{name} - {p.label}",
                    **deltas,
                    "notes": "",
                }
            )
            shown.append({"Block": r.title, "Run": "Δ vs published", **{k: fmt(v, "+.1f") for k, v in deltas.items()}})

    first_published = len(shown) if reference is not None else None
    for _, p in reference.iterrows() if reference is not None else ():
        row_notes = []
        note = notes.mark(p.note, row_notes) if p.note else ""
        data.append(
            {
                "kind": "published",
                "block": p.block,
                "title": BLOCKS[p.block].title,
                "run": p.label,
                **{c.label: p[c.label] for c in COLUMNS},
                "notes": "; ".join(row_notes),
            }
        )
        shown.append(
            {
                "Block": BLOCKS[p.block].title,
                "Run": p.label + note,
                **{c.label: fmt(p[c.label], ".1f") or "-" for c in COLUMNS},
            }
        )
    return Table(with_int_columns(data, [f"{c.label} n" for c in COLUMNS]), pd.DataFrame(shown), notes, first_published)


# ----------------------------------------------------------------------------------------------- rendering


def markdown(t: Table) -> str:
    text = markdown_table(list(t.shown.columns), t.shown.itertuples(index=False), left=TEXT_COLUMNS)
    return text + "".join(f"\n[{i}] {note}\n" for i, note in enumerate(t.notes, 1))  # footnotes, a blank line apart


TEX_ESCAPES = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
}


def tex(text: str) -> str:
    text = "".join(TEX_ESCAPES.get(ch, ch) for ch in str(text))
    return re.sub(r" \[(\d+)\]", r"\\textsuperscript{\1}", text)  # footnote markers


def latex(t: Table) -> str:
    """A booktabs tabular for `\\input`, its footnotes as small paragraphs after it."""
    cols = list(t.shown.columns)
    body = [" & ".join(tex(v) for v in r) + r" \\" for r in t.shown.itertuples(index=False)]
    if t.first_published is not None and 0 < t.first_published < len(body):
        body.insert(t.first_published, r"\midrule")
    spec = "".join("l" if c in TEXT_COLUMNS else "r" for c in cols)
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(map(tex, cols)) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if t.notes:
        lines.append(r"\par\smallskip")
        lines += [rf"{{\footnotesize\textsuperscript{{{i}}}~{tex(text)}\par}}" for i, text in enumerate(t.notes, 1)]
    return "\n".join(lines) + "\n"


def write(t: Table, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.{ext}" for ext in ("md", "tex", "csv")]
    paths[0].write_text(markdown(t))
    paths[1].write_text(latex(t))
    t.data.to_csv(paths[2], index=False)
    return paths
