"""Tables 1 and 2 (docs/recipe.md) as Markdown, LaTeX (booktabs) and CSV.

Each table is built once as two frames: `data` holds the numbers at full precision (the CSV) and `shown` the
same numbers rounded once to text (Markdown and LaTeX), so the three formats cannot disagree. A dash is a
missing number and carries a numbered footnote saying why. Published rows are labelled as published.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..glue.tasks import COLUMNS
from ..markdown import table as markdown_table
from ..model import BLOCKS
from ..reference import BASELINE, PUBLISHED_HOURS, published_rows
from . import stats
from .load import describe_problems

# What must match for microbatch steps to be comparable: same budget, same hardware, same microbatch.
SPEED_KEY = ("budget", "budget_hours", "device", "world_size", "microbatch", "profile")
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
        return None, f"{run.name}: no Pre-LN run with the same budget, device, world size, microbatch and profile"
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


def members_of(run: pd.Series) -> list[str]:
    """The run names behind a table row (several for a replicate group)."""
    members = run.get("members")
    return members if isinstance(members, list) else [run.name]


def glue_note(run: pd.Series, problems: pd.DataFrame) -> str:
    mine = problems[problems.run.isin(members_of(run))]
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
    """Counts as nullable integers, so the CSV says 800, not 800.0, and a missing count stays empty. A column
    holding a mean over replicate runs (802.5 steps) stays a float."""
    frame = pd.DataFrame(data)
    for c in columns:
        if c in frame:
            values = pd.to_numeric(frame[c]).dropna()
            if (values == values.round()).all():
                frame[c] = pd.to_numeric(frame[c]).astype("Int64")
    return frame


def count(value) -> str:
    """A count as text: 800, or 802.5 when it is a mean over replicates."""
    return "" if missing(value) else format(value, ".0f" if float(value).is_integer() else ".1f")


def glue_baseline(run: pd.Series, runs: pd.DataFrame, need_average: bool = True) -> pd.Series | None:
    """The Pre-LN row with the same budget, hardware and GLUE protocol whose GLUE values `run`'s are compared to
    (the last listed, when several); with need_average, both must have a GLUE average."""
    if (need_average and missing(run.glue_mean)) or run.get("summary_problem") or not run.glue_seeds:
        return None
    for _, p in runs[runs.block == BASELINE].iloc[::-1].iterrows():
        if all(same(p[k], run[k]) for k in (*SPEED_KEY, "glue_protocol_hash")) and p.glue_seeds:
            if not need_average or not missing(p.glue_mean):
                return p
    return None


WELCH_NOTE = "95 % interval contains 0: within noise (Welch over fine-tuning seeds)"
FEW_SEEDS_NOTE = "an interval needs at least two GLUE seeds on both sides"


def interval_cell(interval: stats.Interval | None, notes: Notes, row_notes: list[str], digits: int = 1) -> str:
    """'+0.4 [-0.3, +1.1]', marked within noise when the interval contains 0; '-' and a note without one."""
    if interval is None:
        return "-" + notes.mark(FEW_SEEDS_NOTE, row_notes)
    text = f"{interval.diff:+.{digits}f} [{interval.low:+.{digits}f}, {interval.high:+.{digits}f}]"
    return text + (notes.mark(WELCH_NOTE, row_notes) if interval.within_noise else "")


def speed_cells(r: pd.Series, base: pd.Series | None) -> dict:
    """Speed two ways: microbatch steps / Pre-LN's (the paper's) and median tokens/s / Pre-LN's, and for
    replicates the spread of the first over pretraining runs."""
    if base is None:
        return {"speed": None, "speed_std": None, "speed_rate": None}
    ratios = [v / base.microbatch_steps for v in r.steps_values] or [r.microbatch_steps / base.microbatch_steps]
    rate = r.rate_median / base.rate_median if not missing(r.rate_median) and not missing(base.rate_median) else None
    return {
        "speed": float(np.mean(ratios)),
        "speed_std": float(np.std(ratios, ddof=1)) if len(ratios) > 1 else None,
        "speed_rate": rate,
    }


def steadiness_note(r: pd.Series, base: pd.Series | None, speed: dict) -> str | None:
    """A footnote when a speed ratio cannot be taken at face value: the run's (or its baseline's) tokens/s
    varied by more than 10 % between log windows, or the two speed ratios disagree by more than 5 %."""
    reasons = []
    for who in (r, base) if base is not None and base.name != r.name else (r,):
        if not missing(who.rate_cv) and who.rate_cv > 0.10:
            reasons.append(f"{who.name}'s tokens/s varied by {who.rate_cv:.0%} between log windows")
    if speed["speed"] is not None and speed["speed_rate"] is not None:
        gap = abs(speed["speed_rate"] / speed["speed"] - 1)
        if gap > 0.05:
            reasons.append(f"the step ratio and the median tokens/s ratio differ by {gap:.0%}")
    if not reasons:
        return None
    return (
        f"{r.name}: the machine was not steady ({'; '.join(reasons)}); `make bench` measures the blocks side by "
        "side in one process"
    )


def of_published_budget(run: pd.Series) -> bool:
    """Whether a run's budget is the published runs' (24 h): only then is a difference to them a comparison."""
    hours = run.get("budget_hours")
    return not missing(hours) and abs(float(hours) - PUBLISHED_HOURS) < 1e-9


def published_note(runs: pd.DataFrame) -> str:
    hours = sorted({f"{h:g} h" for h in runs.budget_hours if not missing(h)}) or ["unknown"]
    return (
        f"no Δ vs published: the published numbers are {PUBLISHED_HOURS:g}-hour runs on a GPU, and a run is "
        f"compared with them only at that budget (these runs: {', '.join(hours)})"
    )


def table1(
    runs: pd.DataFrame, problems: pd.DataFrame, reference: pd.DataFrame | None, glue: pd.DataFrame | None = None
) -> Table:
    """Block, GLUE average (mean ± std over seeds), its difference to Pre-LN with a 95 % Welch interval,
    parameters, microbatch steps, speed vs Pre-LN (steps and median tokens/s), held-out MLM loss.

    `runs` may be replicate groups (load.replicates): GLUE over pretraining x fine-tuning seeds, speed and
    losses mean ± std over pretraining runs, with the counts in the CSV.
    """
    notes, paper = Notes(), published_rows(reference)
    data, shown = [], []
    any_published_budget = any(of_published_budget(r) for _, r in runs.iterrows())
    if reference is not None and not any_published_budget:
        notes.mark(published_note(runs), [])
    for name, r in runs.iterrows():
        row_notes: list[str] = []
        base_name, speed_note = speed_baseline(r, runs)
        base = runs.loc[base_name] if base_name else None
        speed = speed_cells(r, base)
        unsteady = steadiness_note(r, base, speed) if base is not None else None
        members = members_of(r)
        gbase = glue_baseline(r, runs)
        interval = stats.welch(r.glue_values, gbase.glue_values) if gbase is not None and gbase.name != name else None
        loss = r.eval_loss if not missing(r.eval_loss) else r.final_loss
        d = {
            "kind": "run",
            "block": r.block,
            "title": r.title,
            "run": name,
            "replicates": r.get("replicates", 1),
            "train_seeds": r.get("train_seeds"),
            "glue_mean": r.glue_mean,
            "glue_std": r.glue_std,
            "glue_n": r.glue_n,
            "glue_vs_preln": interval.diff if interval else None,
            "glue_vs_preln_low": interval.low if interval else None,
            "glue_vs_preln_high": interval.high if interval else None,
            "glue_within_noise": interval.within_noise if interval else None,
            "glue_baseline": gbase.name if gbase is not None else None,
            "params_m": None if missing(r.params) else r.params / 1e6,
            "microbatch_steps": r.microbatch_steps,
            **speed,
            "speed_baseline": base_name,
            "rate_median": r.rate_median,
            "rate_cv": r.rate_cv,
            "mlm_loss": loss,
            "mlm_loss_std": np.std(r.loss_values, ddof=1) if len(r.get("loss_values") or []) > 1 else None,
            "eval_loss": r.eval_loss,
            "final_loss": r.final_loss,
        }
        if gbase is None:
            vs_preln = ""
        elif gbase.name == name:
            vs_preln = "ref"
        else:
            vs_preln = interval_cell(interval, notes, row_notes)
        speed_text = "-" if speed["speed"] is None else f"{speed['speed']:.2f}"
        if speed["speed_std"] is not None:
            speed_text += f" ± {speed['speed_std']:.2f}"
        s = {
            "Block": r.title,
            "Run": name
            + (
                notes.mark(summary_note(r), row_notes)
                if r.summary_problem
                else ""
                if r.completed
                else notes.mark(f"{name} did not complete (stop reason: {r.stop_reason})", row_notes)
            )
            + (
                notes.mark(
                    f"{name}: {len(members)} pretraining seeds ({r.train_seeds}); GLUE over all "
                    f"{r.glue_n} pretraining x fine-tuning seeds, speed and MLM loss mean ± std over the "
                    f"{len(members)} runs",
                    row_notes,
                )
                if len(members) > 1
                else ""
            ),
            "GLUE": glue_cell(r, problems, notes, row_notes),
            "vs Pre-LN (95 % CI)": vs_preln,
            "Params (M)": fmt(d["params_m"], ".1f"),
            "Microbatch steps": count(r.microbatch_steps),
            "Speed": speed_text
            + (notes.mark(speed_note, row_notes) if speed_note else "")
            + (notes.mark(unsteady, row_notes) if unsteady else ""),
            "Speed (tok/s)": fmt(speed["speed_rate"], ".2f") or "-",
            "MLM loss": (fmt(loss, ".3f") or "-")
            + (f" ± {np.std(r.loss_values, ddof=1):.3f}" if len(members) > 1 and len(r.loss_values) > 1 else "")
            + (
                notes.mark("training loss of the last log window: this run recorded no held-out loss", row_notes)
                if missing(r.eval_loss) and not missing(r.final_loss)
                else ""
            ),
        }
        if reference is not None and any_published_budget:
            p = paper.get(r.block) if of_published_budget(r) else None
            d["delta_glue"] = r.glue_mean - p.glue_mean if p is not None and not missing(r.glue_mean) else None
            d["delta_speed"] = speed["speed"] - p.speed if p is not None and speed["speed"] is not None else None
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
                "vs Pre-LN (95 % CI)": "",
                "Speed": fmt(p.speed, ".2f"),
                "Speed (tok/s)": "",
                "MLM loss": "",
                **({"Δ GLUE": "", "Δ speed": ""} if any_published_budget else {}),
            }
        )
    return Table(with_int_columns(data, ["glue_n", "microbatch_steps"]), pd.DataFrame(shown), notes, first_published)


def table2(runs: pd.DataFrame, glue: pd.DataFrame, problems: pd.DataFrame, reference: pd.DataFrame | None) -> Table:
    """Per-task GLUE scores (mean over seeds; std and seed count in the CSV), with deltas to the paper."""
    notes, paper = Notes(), published_rows(reference)
    data, shown = [], []
    if reference is not None and not any(of_published_budget(r) for _, r in runs.iterrows()):
        notes.mark(published_note(runs), [])
    for name, r in runs.iterrows():
        row_notes: list[str] = []
        scores = glue[glue.run == name].set_index("column")
        d = {"kind": "run", "block": r.block, "title": r.title, "run": name}
        s = {"Block": r.title, "Run": name}
        seeds = len(r.glue_seeds.split(",")) if r.glue_seeds else 0  # pretraining x fine-tuning seeds in a group
        for c in COLUMNS:
            mean, std, n = scores.loc[c.label, ["mean", "std", "n"]]
            n = int(n)
            d[c.label], d[f"{c.label} std"], d[f"{c.label} n"] = mean, std, n
            bad = problems[(problems.run.isin(members_of(r))) & (problems.task == c.task)]
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
        p = paper.get(r.block) if of_published_budget(r) else None
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
        gbase = glue_baseline(r, runs, need_average=False)  # per column: compared wherever a column exists
        if gbase is not None and gbase.name != name:  # the difference to Pre-LN, with its Welch interval
            base_scores = glue[glue.run == gbase.name].set_index("column")
            d = {"kind": "vs_preln", "block": r.block, "title": r.title, "run": f"{name} - {gbase.name}"}
            cells, row_notes = {}, []
            for c in COLUMNS:
                iv = stats.welch(scores.loc[c.label, "values"], base_scores.loc[c.label, "values"])
                d[c.label] = iv.diff if iv else None
                d[f"{c.label} low"], d[f"{c.label} high"] = (iv.low, iv.high) if iv else (None, None)
                d[f"{c.label} within_noise"] = iv.within_noise if iv else None
                if iv is None:
                    cells[c.label] = "-" + notes.mark(FEW_SEEDS_NOTE, row_notes)
                else:
                    half = (iv.high - iv.low) / 2
                    cells[c.label] = f"{iv.diff:+.1f} ± {half:.1f}" + (
                        notes.mark(WELCH_NOTE, row_notes) if iv.within_noise else ""
                    )
            data.append({**d, "notes": "; ".join(row_notes)})
            shown.append({"Block": r.title, "Run": f"Δ vs {gbase.name} (95 % CI)", **cells})

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
    shown = pd.DataFrame(shown)
    ran = glue[glue.run.isin(runs.name)].groupby("column")["n"].sum()
    if ran.sum() > 0:  # GLUE was run: columns of tasks that no run has are left out of the shown table
        shown = shown.drop(columns=[c.label for c in COLUMNS if ran.get(c.label, 0) == 0 and c.label in shown])
    return Table(with_int_columns(data, [f"{c.label} n" for c in COLUMNS]), shown, notes, first_published)


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
    text = re.sub(r"(?<![\w.])-(?=\d)", "$-$", text)  # a minus sign, not a hyphen (run names keep theirs)
    text = re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", text)  # **bold**
    return re.sub(r" \[(\d+)\]", r"\\textsuperscript{\1}", text)  # footnote markers


# --latex compact: short headers (the long ones are in the Markdown and CSV tables)
COMPACT_HEADERS = {
    "vs Pre-LN (95 % CI)": "vs Pre-LN [95 % CI]",
    "Params (M)": "Params",
    "Microbatch steps": "Steps",
    "Speed (tok/s)": "tok/s",
    "MLM loss": "MLM",
    "Δ GLUE": "Δ pub.",
    "Δ speed": "Δ pub. speed",
    "MNLI-m": "M-m",
    "MNLI-mm": "M-mm",
    "SST-2": "SST",
    "STS-B": "STS",
    "QNLI": "QNLI",
    "MRPC": "MRPC",
}
ROW_LABELS = {"delta": "Δ pub.", "vs_preln": "Δ Pre-LN"}  # compact: a row's kind, in the Block column


def tabular(shown: pd.DataFrame, headers: list[str], rules: list[int] = (), resize: bool = False) -> list[str]:
    """A booktabs tabular of `shown` (cells as text) under `headers`; a \\midrule before each row in `rules`."""
    body = [" & ".join(tex(v) for v in r) + r" \\" for r in shown.itertuples(index=False)]
    for at in sorted(rules, reverse=True):
        if 0 < at < len(body):
            body.insert(at, r"\midrule")
    spec = "".join("l" if c in TEXT_COLUMNS else "r" for c in shown.columns)
    lines = [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(map(tex, headers)) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if resize:  # scaled to the width of the table or column it is \input in (fonts shrink with it)
        lines = [r"\resizebox{\linewidth}{!}{%", *lines, "}"]
    return lines


def footnotes(notes: list[str]) -> list[str]:
    """The notes as small left-aligned paragraphs (also inside a centred table environment)."""
    if not notes:
        return []
    return [
        r"\par\smallskip",
        r"{\raggedright\footnotesize",
        *(rf"\textsuperscript{{{i}}}~{tex(text)}\par" for i, text in enumerate(notes, 1)),
        "}",
    ]


def latex(t: Table, style: str = "full", resize: bool = False) -> str:
    """A booktabs tabular for `\\input`, its footnotes as small paragraphs after it. style compact: short headers,
    smaller type and tighter columns, the published rows as a block of their own, intervals in Table 2's
    difference rows left to the CSV (bold: the interval excludes 0), and no Run column where blocks are unique."""
    if style == "compact" and "kind" in t.data and len(t.data) == len(t.shown):
        return compact(t, resize)
    rules = [t.first_published] if t.first_published is not None else []
    return "\n".join(tabular(t.shown, list(t.shown.columns), rules, resize) + footnotes(t.notes)) + "\n"


def renumbered(shown: pd.DataFrame, notes: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Only the notes some cell still marks, numbered in the order they are first marked (row by row)."""
    order: list[int] = []
    for row in shown.itertuples(index=False):
        for cell in row:
            order += [int(n) for n in re.findall(r" \[(\d+)\]", str(cell)) if int(n) not in order]
    new = {old: i for i, old in enumerate(order, 1)}
    shown = shown.map(lambda c: re.sub(r" \[(\d+)\]", lambda m: f" [{new[int(m.group(1))]}]", str(c)))
    return shown, [notes[old - 1] for old in order]


def compact(t: Table, resize: bool) -> str:
    shown, data, notes = t.shown.copy(), t.data.reset_index(drop=True), list(t.notes)
    kinds = data["kind"]
    runs = kinds == "run"
    if "Run" in shown and "Block" in shown:
        unique = not shown.loc[runs, "Block"].duplicated().any()
        standalone = not runs.any()  # Table 3: every row a difference, none under its run: the block names it
        for i in shown.index:
            label = None if standalone else ROW_LABELS.get(kinds[i])
            if label:
                shown.loc[i, "Block"] = f"  {label}"
            elif kinds[i] == "published":
                source = re.sub(r" \[\d+\]$", "", str(shown.loc[i, "Run"]))
                if source not in notes:
                    notes.append(source)
                shown.loc[i, "Block"] = f"{shown.loc[i, 'Block']} [{notes.index(source) + 1}]"
            elif not unique:
                shown.loc[i, "Block"] = f"{shown.loc[i, 'Block']} ({data.loc[i, 'run']})"
        shown = shown.drop(columns="Run")
    legend = (
        "Δ Pre-LN: difference to Pre-LN; bold where its 95 % interval (Welch; Table 3: paired bootstrap) excludes 0 "
        "(the intervals: the CSV and Markdown)"
    )
    for i in shown.index[kinds == "vs_preln"]:  # the difference alone; its interval stays in the CSV and Markdown
        for column in shown.columns[1:]:
            text = re.sub(r" ± [\d.]+| \[\d+\]| \[[^\]]*,[^\]]*\]", "", str(shown.loc[i, column]))
            noise = data.loc[i, f"{column} within_noise"] if f"{column} within_noise" in data else None
            real = not missing(noise) and not bool(noise)  # the interval excludes 0
            shown.loc[i, column] = f"**{text}**" if real and text else text
        notes += [] if legend in notes else [legend]
        shown.loc[i, "Block"] = f"{shown.loc[i, 'Block']} [{notes.index(legend) + 1}]"
    shown, notes = renumbered(shown, notes)
    mine, published = shown[kinds != "published"], shown[kinds == "published"]
    published = published.loc[:, [c == "Block" or published[c].astype(str).str.strip().ne("").any() for c in published]]
    wide = len(mine.columns) > 9  # Table 2 in one column (Table 3 across two): nine GLUE columns beside the block
    size = r"\scriptsize\setlength{\tabcolsep}{1.5pt}" if wide else r"\footnotesize\setlength{\tabcolsep}{3pt}"
    lines = ["{" + size, *tabular(mine, [COMPACT_HEADERS.get(c, c) for c in mine.columns], resize=resize)]
    if len(published):
        lines += [r"\par\medskip", "published", r"\par\smallskip"]
        lines += tabular(published, [COMPACT_HEADERS.get(c, c) for c in published.columns], resize=resize)
    lines.append("}")
    return "\n".join(lines + footnotes(notes)) + "\n"


def write(t: Table, out: Path, stem: str, style: str = "full", resize: bool = False) -> list[Path]:
    paths = [out / f"{stem}.{ext}" for ext in ("md", "tex", "csv")]
    paths[0].write_text(markdown(t))
    paths[1].write_text(latex(t, style, resize))
    t.data.to_csv(paths[2], index=False)
    return paths
