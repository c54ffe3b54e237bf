"""cramming_simple/report/render.py: LaTeX that fits a two-column paper."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers.runs import latex_missing, make_run, report


def test_compact_table3_keeps_the_difference_and_marks_what_the_interval_excludes():
    from cramming_simple.report.render import latex
    from cramming_simple.report.tables import Notes, Table

    data = pd.DataFrame(
        [{"kind": "vs_preln", "block": "sas", "title": "SAS", "run": "a - b", "RTE within_noise": False}]
    )
    shown = pd.DataFrame([{"Block": "SAS", "Run": "a vs b", "RTE": "+2.0 [+0.5, +3.5]"}])
    text = latex(Table(data, shown, Notes(), None), "compact")
    assert r"\textbf{+2.0}" in text and "+0.5" not in text


TABLE3_DOC = r"""\documentclass[10pt,twocolumn]{article}
\usepackage[margin=0.75in]{geometry}
\usepackage{booktabs,graphicx}
\begin{document}
\begin{table*}\centering\input{table3.tex}\caption{Table 3, two columns wide}\end{table*}
Text.
\end{document}
"""


@pytest.mark.skipif(latex_missing() is not None, reason=latex_missing() or "")
def test_compact_table3_fits_a_two_column_paper(two_blocks_with_predictions, tmp_path):
    _, runs, _ = two_blocks_with_predictions
    overfull = {}
    for style in ("full", "compact"):
        out = tmp_path / style
        code, _, err = report([str(runs["preln"]), str(runs["sas"]), "--out", str(out), "--latex", style])
        assert code == 0, err
        (out / "doc.tex").write_text(TABLE3_DOC)
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=out, capture_output=True
        )
        log = (out / "doc.log").read_text(errors="replace")
        assert done.returncode == 0, log[-2000:]
        overfull[style] = [line for line in log.splitlines() if line.startswith("Overfull \\hbox")]
    assert overfull["full"] and not overfull["compact"]  # the check can fail: the full table overflows


PAPER_DOC = r"""\documentclass[10pt,twocolumn]{article}
\usepackage[margin=0.75in]{geometry}
\usepackage{booktabs,graphicx}
\begin{document}
\begin{table*}\centering\input{table1.tex}\caption{Table 1, two columns wide}\end{table*}
\begin{table}\centering\input{table2.tex}\caption{Table 2, one column wide}\end{table}
Text.
\end{document}
"""


def overfull(folder: Path, tmp_path: Path) -> list[str]:
    """Compile PAPER_DOC (a two-column 10 pt article, 0.75 in margins: a 506 pt text width, 241 pt columns)
    around folder's table1.tex and table2.tex; the "Overfull \\hbox" lines of its log."""
    work = tmp_path / f"tex-{folder.name}"
    work.mkdir()
    for name in ("table1.tex", "table2.tex"):
        shutil.copy(folder / name, work / name)
    (work / "doc.tex").write_text(PAPER_DOC)
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=work, capture_output=True, text=True
    )
    log = (work / "doc.log").read_text(errors="replace")
    assert done.returncode == 0, log[-2000:]
    return [line for line in log.splitlines() if line.startswith("Overfull \\hbox")]


@pytest.fixture(scope="module")
def latex_styles(tmp_path_factory) -> Path:
    """preln, sas and sasp reported twice, into full/ and compact/ (report --latex full | compact)."""
    root = tmp_path_factory.mktemp("latex")
    for block in ("preln", "sas", "sasp"):
        make_run(root / "runs", f"{block}-24h", block)
    for style in ("full", "compact"):
        code, _, err = report(["--runs-dir", str(root / "runs"), "--out", str(root / style), "--latex", style])
        assert code == 0, err
    return root


@pytest.mark.skipif(latex_missing() is not None, reason=latex_missing() or "")
def test_compact_latex_fits_a_two_column_paper_where_the_full_tables_do_not(latex_styles, tmp_path):
    assert len(overfull(latex_styles / "full", tmp_path)) == 2  # the check can fail: full Table 1 and 2 overflow
    assert overfull(latex_styles / "compact", tmp_path) == []
    code, _, err = report(
        ["--runs-dir", str(latex_styles / "runs"), "--out", str(tmp_path / "resized"), "--latex-resize"]
    )
    assert code == 0 and r"\resizebox{\linewidth}{!}" in (tmp_path / "resized" / "table1.tex").read_text()
    assert overfull(tmp_path / "resized", tmp_path) == []


def test_latex_minus_signs_left_aligned_notes_and_the_compact_layout(latex_styles):
    from cramming_simple.report.render import tex

    assert tex("-0.7 [-6.7, +5.3]") == "$-$0.7 [$-$6.7, +5.3]"
    assert tex("preln-24h") == "preln-24h" and tex("-") == "-" and tex("**-1.0**") == r"\textbf{$-$1.0}"
    full = (latex_styles / "full" / "table1.tex").read_text()
    assert r"{\raggedright\footnotesize" in full and "$-$0." in full
    compact = (latex_styles / "compact" / "table1.tex").read_text()
    assert compact.count(r"\begin{tabular}") == 2  # yours, then the published rows as a block of their own
    header = next(line for line in compact.splitlines() if line.startswith("Block &"))
    assert "Run" not in header and "Steps" in header
    table2 = (latex_styles / "compact" / "table2.tex").read_text()
    assert r"$\Delta$ Pre-LN" in table2 and r"$\pm$" not in table2.split(r"\end{tabular}")[0]
