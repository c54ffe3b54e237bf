"""A table (report.tables.Table) as files: Markdown, LaTeX (booktabs; full or compact) and CSV.

The shown frame is rendered as it is: the numbers were rounded once when the table was built, so the formats
cannot disagree. Footnotes are numbered in order of first use.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..markdown import table as markdown_table
from .tables import TEXT_COLUMNS, Table, missing


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
