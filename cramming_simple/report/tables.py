"""Tables 1 and 2 (docs/recipe.md) as Markdown, LaTeX (booktabs) and CSV.

Each table is built once as two frames: `data` holds the numbers at full precision (the CSV) and `shown` the
same numbers rounded once to text (Markdown and LaTeX), so the three formats cannot disagree. A dash is a
missing number and carries a numbered footnote saying why. Published rows are labelled as published.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..glue.tasks import COLUMNS
from ..model import BLOCKS
from ..reference import BASELINE, published_rows
from . import stats
from .budgets import capped_note, of_published_budget, plain_hours_note, published_note
from .load import describe_problems
from .stats import missing

# What must match for speeds to be comparable: same budget (and reference device), same hardware, same microbatch.
SPEED_KEY = ("budget", "budget_hours", "reference_name", "device", "world_size", "microbatch", "profile")
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


def fmt(value, spec: str) -> str:
    """A number as text; '' when there is none (not applicable: missing numbers of runs get a dash)."""
    return "" if missing(value) else format(value, spec)


def joined(values, sep: str = ",") -> str | None:
    """Seeds or hashes (a tuple) as one cell of a table or a line: "0,1"; None stays None."""
    return None if values is None or missing(values) else sep.join(map(str, values))


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
    """Speed two ways: microbatch steps per training second / Pre-LN's (the paper's step ratio when no run is
    capped, and a capped run's true speed) and median tokens/s / Pre-LN's, and for replicates the spread of the
    first over pretraining runs."""
    if base is None or missing(base.step_rate) or missing(r.step_rate):
        return {"speed": None, "speed_std": None, "speed_rate": None}
    ratios = [v / base.step_rate for v in r.get("rate_step_values") or [r.step_rate]]
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


def table1(runs: pd.DataFrame, problems: pd.DataFrame, reference: pd.DataFrame | None) -> Table:
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
    if reference is not None and plain_hours_note(runs):
        notes.mark(plain_hours_note(runs), [])
    for name, r in runs.iterrows():
        row_notes: list[str] = []
        d, s = table1_run(name, r, runs, problems, notes, row_notes)
        if reference is not None and any_published_budget:
            p = paper.get(r.block) if of_published_budget(r) else None
            d["delta_glue"] = r.glue_mean - p.glue_mean if p is not None and not missing(r.glue_mean) else None
            d["delta_speed"] = d["speed"] - p.speed if p is not None and d["speed"] is not None else None
            s["Δ GLUE"], s["Δ speed"] = fmt(d["delta_glue"], "+.1f"), fmt(d["delta_speed"], "+.2f")
        data.append({**d, "notes": "; ".join(row_notes)})
        shown.append(s)
    first_published = len(shown) if reference is not None else None
    for _, p in reference.iterrows() if reference is not None else ():
        d, s = table1_published(p, notes, any_published_budget)
        data.append(d)
        shown.append(s)
    return Table(with_int_columns(data, ["glue_n", "microbatch_steps"]), pd.DataFrame(shown), notes, first_published)


def table1_run(name: str, r: pd.Series, runs: pd.DataFrame, problems, notes: Notes, row_notes: list) -> tuple:
    """One run's row of Table 1: (the numbers for table1.csv, the cells as shown)."""
    base_name, speed_note = speed_baseline(r, runs)
    base = runs.loc[base_name] if base_name else None
    speed = speed_cells(r, base)
    unsteady = steadiness_note(r, base, speed) if base is not None else None
    gbase = glue_baseline(r, runs)
    interval = stats.welch(r.glue_values, gbase.glue_values) if gbase is not None and gbase.name != name else None
    loss = r.eval_loss if not missing(r.eval_loss) else r.final_loss
    d = {
        "kind": "run",
        "block": r.block,
        "title": r.title,
        "run": name,
        "replicates": r.get("replicates", 1),
        "train_seeds": joined(r.get("train_seeds")),
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
        "step_rate": r.step_rate,  # microbatch steps per training second
        "capped_at_p": r.get("capped_at_p"),
        "rate_median": r.rate_median,
        "rate_cv": r.rate_cv,
        "mlm_loss": loss,
        "mlm_loss_std": np.std(r.loss_values, ddof=1) if len(r.get("loss_values") or []) > 1 else None,
        "eval_loss": r.eval_loss,
        "final_loss": r.final_loss,
    }
    s = {
        "Block": r.title,
        "Run": name + run_marks(name, r, notes, row_notes),
        "GLUE": glue_cell(r, problems, notes, row_notes),
        "vs Pre-LN (95 % CI)": vs_preln_cell(name, gbase, interval, notes, row_notes),
        "Params (M)": fmt(d["params_m"], ".1f"),
        "Microbatch steps": count(r.microbatch_steps),
        "Speed": speed_text(speed)
        + (notes.mark(speed_note, row_notes) if speed_note else "")
        + (notes.mark(unsteady, row_notes) if unsteady else ""),
        "Speed (tok/s)": fmt(speed["speed_rate"], ".2f") or "-",
        "MLM loss": loss_cell(r, loss, notes, row_notes),
    }
    return d, s


def run_marks(name: str, r: pd.Series, notes: Notes, row_notes: list) -> str:
    """The Run cell's footnotes: a damaged summary or an unfinished run, and replicates."""
    if r.summary_problem:
        marks = notes.mark(summary_note(r), row_notes)
    elif not r.completed:
        marks = notes.mark(f"{name} did not complete (stop reason: {r.stop_reason})", row_notes)
    else:
        marks = ""
    capped = capped_note(name, r)
    if capped:
        marks += " (capped)" + notes.mark(capped, row_notes)
    members = members_of(r)
    if len(members) > 1:
        marks += notes.mark(
            f"{name}: {len(members)} pretraining seeds ({joined(r.train_seeds)}); GLUE over all {r.glue_n} "
            "pretraining x fine-tuning seeds, speed and MLM loss mean ± std over the {len(members)} runs",
            row_notes,
        )
    return marks


def vs_preln_cell(name: str, gbase, interval, notes: Notes, row_notes: list) -> str:
    if gbase is None:
        return ""
    if gbase.name == name:
        return "ref"
    return interval_cell(interval, notes, row_notes)


def speed_text(speed: dict) -> str:
    text = "-" if speed["speed"] is None else f"{speed['speed']:.2f}"
    return text + (f" ± {speed['speed_std']:.2f}" if speed["speed_std"] is not None else "")


def loss_cell(r: pd.Series, loss, notes: Notes, row_notes: list) -> str:
    text = fmt(loss, ".3f") or "-"
    if len(members_of(r)) > 1 and len(r.loss_values) > 1:
        text += f" ± {np.std(r.loss_values, ddof=1):.3f}"
    if missing(r.eval_loss) and not missing(r.final_loss):
        text += notes.mark("training loss of the last log window: this run recorded no held-out loss", row_notes)
    return text


def table1_published(p: pd.Series, notes: Notes, any_published_budget: bool) -> tuple[dict, dict]:
    """A published row of Table 1 (reference data): (the numbers, the cells)."""
    row_notes: list[str] = []
    glue_missing = missing(p.glue_mean)
    note = notes.mark(p.note, row_notes) if p.note else ""
    d = {
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
    glue = "-" if glue_missing else f"{p.glue_mean:.1f}" + ("" if missing(p.glue_std) else f" ± {p.glue_std:.1f}")
    s = {
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
    return d, s


def table2(runs: pd.DataFrame, glue: pd.DataFrame, problems: pd.DataFrame, reference: pd.DataFrame | None) -> Table:
    """Per-task GLUE scores (mean over seeds; std and seed count in the CSV), with deltas to the paper."""
    notes, paper = Notes(), published_rows(reference)
    rows: list[tuple[dict, dict]] = []  # (numbers for the CSV, cells as shown)
    if reference is not None and not any(of_published_budget(r) for _, r in runs.iterrows()):
        notes.mark(published_note(runs), [])
    for name, r in runs.iterrows():
        scores = glue[glue.run == name].set_index("column")
        d, s = table2_run(name, r, scores, problems, notes)
        rows.append((d, s))
        p = paper.get(r.block) if of_published_budget(r) else None
        if p is not None:  # the delta row sits right under its run
            deltas = {c.label: None if missing(d[c.label]) else d[c.label] - p[c.label] for c in COLUMNS}
            d_delta = {"kind": "delta", "block": r.block, "title": r.title, "run": f"{name} - {p.label}", **deltas}
            shown = {"Block": r.title, "Run": "Δ vs published", **{k: fmt(v, "+.1f") for k, v in deltas.items()}}
            rows.append(({**d_delta, "notes": ""}, shown))
        gbase = glue_baseline(r, runs, need_average=False)  # per column: compared wherever a column exists
        if gbase is not None and gbase.name != name:  # the difference to Pre-LN, with its Welch interval
            rows.append(
                table2_vs_preln(name, r, gbase, scores, glue[glue.run == gbase.name].set_index("column"), notes)
            )
    first_published = len(rows) if reference is not None else None
    for _, p in reference.iterrows() if reference is not None else ():
        row_notes: list[str] = []
        note = notes.mark(p.note, row_notes) if p.note else ""
        d = {"kind": "published", "block": p.block, "title": BLOCKS[p.block].title, "run": p.label}
        d.update({c.label: p[c.label] for c in COLUMNS}, notes="; ".join(row_notes))
        cells = {c.label: fmt(p[c.label], ".1f") or "-" for c in COLUMNS}
        rows.append((d, {"Block": BLOCKS[p.block].title, "Run": p.label + note, **cells}))
    shown = pd.DataFrame([s for _, s in rows])
    ran = glue[glue.run.isin(runs.name)].groupby("column")["n"].sum()
    if ran.sum() > 0:  # GLUE was run: columns of tasks that no run has are left out of the shown table
        shown = shown.drop(columns=[c.label for c in COLUMNS if ran.get(c.label, 0) == 0 and c.label in shown])
    data = [d for d, _ in rows]
    return Table(with_int_columns(data, [f"{c.label} n" for c in COLUMNS]), shown, notes, first_published)


def table2_run(name: str, r: pd.Series, scores: pd.DataFrame, problems: pd.DataFrame, notes: Notes) -> tuple:
    """A run's row of Table 2: every column's mean over seeds, a footnote where seeds are missing."""
    row_notes: list[str] = []
    d = {"kind": "run", "block": r.block, "title": r.title, "run": name}
    s = {"Block": r.title, "Run": name}
    seeds = len(r.glue_seeds)  # pretraining x fine-tuning seeds in a group
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
            missing_why = f"{c.label}: no {c.metric} in {seeds - n} seed file(s)"
            why = f"{name}, " + (describe_problems(bad) if not bad.empty else missing_why)
            s[c.label] = (
                "-" + notes.mark(why, row_notes)
                if n == 0
                else f"{mean:.1f}" + notes.mark(f"{why}; mean of the other {n} seed(s)", row_notes)
            )
    return {**d, "notes": "; ".join(row_notes)}, s


def table2_vs_preln(name: str, r: pd.Series, gbase, scores, base_scores, notes: Notes) -> tuple[dict, dict]:
    """The row under a run: per column, its difference to Pre-LN's with a 95 % Welch interval."""
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
            noise = notes.mark(WELCH_NOTE, row_notes) if iv.within_noise else ""
            cells[c.label] = f"{iv.diff:+.1f} ± {half:.1f}" + noise
    return {**d, "notes": "; ".join(row_notes)}, {"Block": r.title, "Run": f"Δ vs {gbase.name} (95 % CI)", **cells}
