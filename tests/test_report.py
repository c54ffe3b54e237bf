"""The report stage: numbers in Tables 1 and 2, agreement of Markdown / LaTeX / CSV, figures, warnings, CLI.

Run folders are written here with known values; every expected number is worked out by hand from them.
"""

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers.runs import BASE, OFFSET, latex_missing, make_run, md_rows, report, tex_rows

from cramming_simple.glue.tasks import COLUMNS

LABELS = [c.label for c in COLUMNS]  # MNLI-m, MNLI-mm, SST-2, STS-B, RTE, QNLI, QQP, MRPC, CoLA
PAPER_GLUE = {"preln": 78.9, "sas": 78.4, "sasp": 78.3}
PAPER_SPEED = {"preln": 1.0, "sas": 1.09, "sasp": 1.16}
PAPER_T2 = {
    "preln": [81.2, 81.6, 89.9, 87.6, 56.3, 88.9, 87.1, 88.3, 49.4],
    "sas": [79.7, 80.1, 90.3, 84.7, 58.4, 87.5, 86.8, 87.5, 50.6],
}


@pytest.fixture(scope="module")
def paper_like(tmp_path_factory):
    """preln, sas, sasp on one GPU and budget; sasp: CoLA failed on every seed, RTE seed 3 never ran."""
    root = tmp_path_factory.mktemp("runs")
    make_run(root, "preln-24h", "preln")
    make_run(root, "sas-24h", "sas")
    make_run(root, "sasp-24h", "sasp", fail=[("cola", s) for s in OFFSET], skip=[("rte", 3)])
    out = root.parent / "report"
    code, stdout, stderr = report(["--runs-dir", str(root), "--out", str(out)])
    assert code == 0, stderr
    return out, stdout, stderr


def expected_glue(block):
    return sum(BASE[block]) / 9 + 2, math.sqrt(7)


def test_table1_numbers(paper_like):
    out, _, _ = paper_like
    csv = pd.read_csv(out / "table1.csv")
    runs = csv[csv.kind == "run"].set_index("run")
    assert list(runs.block) == ["preln", "sas", "sasp"]
    for name, block in [("preln-24h", "preln"), ("sas-24h", "sas")]:
        mean, std = expected_glue(block)
        r = runs.loc[name]
        assert math.isclose(r.glue_mean, mean, rel_tol=1e-9) and math.isclose(r.glue_std, std, rel_tol=1e-9)
        assert math.isclose(r.delta_glue, mean - PAPER_GLUE[block], rel_tol=1e-9)
    assert runs.loc["sas-24h", "speed"] == pytest.approx(900 / 800) and runs.loc["sasp-24h", "speed"] == pytest.approx(
        960 / 800
    )
    assert runs.loc["preln-24h", "speed"] == 1.0
    assert runs.loc["sas-24h", "delta_speed"] == pytest.approx(900 / 800 - 1.09)
    assert runs.loc["sasp-24h", "delta_speed"] == pytest.approx(960 / 800 - 1.16)
    assert runs.loc["sas-24h", "params_m"] == 101.0 and runs.loc["sas-24h", "final_loss"] == pytest.approx(2.09)
    assert pd.isna(runs.loc["sasp-24h", "glue_mean"]) and pd.isna(runs.loc["sasp-24h", "delta_glue"])

    md = {
        r[1]: dict(zip(md_rows((out / "table1.md").read_text())[0], r))
        for r in md_rows((out / "table1.md").read_text())[1:]
    }
    mean, std = expected_glue("preln")
    assert md["preln-24h"]["GLUE"] == f"{mean:.1f} ± {std:.1f}" == "80.9 ± 2.6"  # (710 / 9 + 2) ± sqrt(7)
    assert md["sas-24h"]["Speed"] == "1.12" and md["sas-24h"]["Δ speed"] == "+0.03"
    # sasp's GLUE average is a dash whose footnote names the failed task and the reason
    cell = md["sasp-24h"]["GLUE"]
    note = re.fullmatch(r"- \[(\d+)\]", cell).group(1)
    footnote = re.search(rf"^\[{note}\] (.*)$", (out / "table1.md").read_text(), re.M).group(1)
    assert footnote == "sasp-24h: no GLUE average (CoLA: seeds 1, 2, 3 failed (non-finite loss); RTE: seed 3 not run)"
    # published rows are there and labelled as such, SAS-P no norm with its NaN footnote
    published = csv[csv.kind == "published"]
    assert len(published) == 7 and published.run.str.contains("published").all()
    assert published.set_index("block").loc["sas", "glue_mean"] == 78.4


def test_table2_numbers_and_failed_task(paper_like):
    out, _, _ = paper_like
    csv = pd.read_csv(out / "table2.csv")
    runs = csv[csv.kind == "run"].set_index("run")
    for label, base, paper in zip(LABELS, BASE["sas"], PAPER_T2["sas"]):
        assert math.isclose(runs.loc["sas-24h", label], base + 2, rel_tol=1e-9)
        assert math.isclose(runs.loc["sas-24h", f"{label} std"], math.sqrt(7), rel_tol=1e-9)
        delta = csv[(csv.kind == "delta") & csv.run.str.startswith("sas-24h")].iloc[0]
        assert math.isclose(delta[label], base + 2 - paper, rel_tol=1e-9, abs_tol=1e-9)
    # sasp RTE: seeds 1 and 2 only -> mean base + 0.5, and a footnote; CoLA failed everywhere -> dash
    assert math.isclose(runs.loc["sasp-24h", "RTE"], 61 + 0.5, rel_tol=1e-9) and runs.loc["sasp-24h", "RTE n"] == 2
    text = (out / "table2.md").read_text()
    rows = {r[1]: dict(zip(md_rows(text)[0], r)) for r in md_rows(text)[1:] if r[1] != "Δ vs published"}
    cola = re.fullmatch(r"- \[(\d+)\]", rows["sasp-24h"]["CoLA"]).group(1)
    assert re.search(rf"^\[{cola}\] sasp-24h, CoLA: seeds 1, 2, 3 failed \(non-finite loss\)$", text, re.M)
    rte = re.fullmatch(r"61\.5 \[(\d+)\]", rows["sasp-24h"]["RTE"]).group(1)
    assert re.search(rf"^\[{rte}\] sasp-24h, RTE: seed 3 not run; mean of the other 2 seed\(s\)$", text, re.M)


@pytest.mark.parametrize("stem", ["table1", "table2"])
def test_markdown_latex_csv_agree(paper_like, stem):
    out, _, _ = paper_like
    md, tex = md_rows((out / f"{stem}.md").read_text()), tex_rows((out / f"{stem}.tex").read_text())
    assert md == tex
    latex = (out / f"{stem}.tex").read_text()
    assert (
        latex.startswith(r"\begin{tabular}")
        and r"\toprule" in latex
        and r"\bottomrule" in latex
        and r"\end{tabular}" in latex
    )
    assert "&" not in latex.replace(" & ", "").replace(r"\&", "")  # every other ampersand escaped ("He \& Hofmann")
    csv = pd.read_csv(out / f"{stem}.csv")
    assert len(csv) == len(md) - 1
    header = md[0]
    if stem == "table1":
        numeric = {
            "Params (M)": "params_m",
            "Speed": "speed",
            "MLM loss": "final_loss",
            "Δ GLUE": "delta_glue",
            "Δ speed": "delta_speed",
        }
    else:
        numeric = {label: label for label in LABELS}
    checked = 0
    for cells, (_, row) in zip(md[1:], csv.iterrows()):
        shown = dict(zip(header, cells))
        for col, csv_col in numeric.items():
            value = re.sub(r" ± [\d.]+$", "", re.sub(r"( \[\d+\])+$", "", shown[col]))  # "+0.4 ± 0.9 [3]" -> "+0.4"
            if value in ("", "-"):
                assert pd.isna(row[csv_col]), (col, row.run)
                continue
            decimals = len(value.split(".")[1]) if "." in value else 0
            assert abs(float(value) - row[csv_col]) <= 0.5 * 10**-decimals + 1e-9, (col, row.run, value, row[csv_col])
            checked += 1
        if stem == "table1" and row.kind == "run" and not pd.isna(row.glue_mean):
            assert shown["GLUE"] == f"{row.glue_mean:.1f} ± {row.glue_std:.1f}"
    assert checked > 20


def test_plots_are_images(paper_like):
    out, stdout, _ = paper_like
    for stem in ("loss_vs_hours", "loss_vs_steps", "schedule", "glue_tasks"):
        png = (out / f"{stem}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000, stem
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF"), stem
        assert f"{stem}.png" in (out / "index.md").read_text()
    assert str(out / "table1.tex") in stdout and str(out / "index.md") in stdout


def test_index_lists_every_run_and_no_warning_for_matching_runs(paper_like):
    out, _, stderr = paper_like
    index = (out / "index.md").read_text()
    for name in ("preln-24h", "sas-24h", "sasp-24h"):
        assert re.search(
            rf"\*\*{name}\*\*.*profile clean, device NVIDIA H100 80GB HBM3, budget 24h \(24 h\).*hash abc.*"
            r"world size 1.*paper \(hash p1, profile clean\)",
            index,
        )
    assert "warning" not in stderr and "## Warnings" not in index


def test_mixed_runs_warn_and_reference_none(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "preln-cpu", "preln", device="cpu (x86_64, 2 threads)", budget="1h", hours=1.0)
    make_run(root, "sas-24h", "sas", protocol_hash="p2", data_hash="def")
    make_run(root, "sasp-24h", "sasp", completed=False, glue=False)
    moved = json.loads((root / "sas-24h" / "summary.json").read_text())  # requeued onto another GPU model
    moved["slurm"] = {"job_id": "4242", "partition": "gpu", "node": "gpu12", "restarts": 1}
    moved["hardware"] = [
        {"device": "NVIDIA A100-SXM4-80GB", "node": "gpu07", "from_step": 0},
        {"device": "NVIDIA H100 80GB HBM3", "node": "gpu12", "from_step": 5000},
    ]
    (root / "sas-24h" / "summary.json").write_text(json.dumps(moved))
    stale = root / "sas-24h" / "glue" / "rte" / "seed1.json"  # left over from an earlier model of the same run
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "model_hash": "m-old"}))
    out = tmp_path / "report"
    code, _, stderr = report(
        [*(str(root / n) for n in ("sasp-24h", "sas-24h", "preln-cpu")), "--out", str(out), "--reference", "none"]
    )
    assert code == 0
    index = (out / "index.md").read_text()
    for needle in (
        "differ in budget",
        "differ in hardware (device)",
        "differ in GLUE protocol",
        "differ in pretraining data",
        "sasp-24h has not completed",
        "sas-24h has GLUE results of different models",
        "sas-24h changed hardware mid-budget (NVIDIA A100-SXM4-80GB from step 0, NVIDIA H100 80GB HBM3 from step",
    ):
        assert needle in stderr and needle in index, needle
    assert "world size 1 on node gpu12 (Slurm job 4242)" in index
    table1 = pd.read_csv(out / "table1.csv")
    assert table1.run.tolist() == ["preln-cpu", "sas-24h", "sasp-24h"]  # BLOCKS order, whatever the order given
    assert (
        set(table1.kind) == {"run"}
        and "delta_glue" not in table1
        and table1.speed.isna().tolist() == [False, True, True]
    )
    md = (out / "table1.md").read_text()
    assert "published" not in md and "Δ" not in md and "published" not in (out / "table2.md").read_text()
    rows = {r[1].split(" [")[0]: dict(zip(md_rows(md)[0], r)) for r in md_rows(md)[1:]}
    # sas: no Pre-LN on its budget and hardware -> no speed; sasp: unfinished and never fine-tuned
    assert rows["sas-24h"]["Speed"].startswith("- [") and "sas-24h: no Pre-LN run with the same budget, device" in md
    assert rows["sasp-24h"]["Run"].startswith("sasp-24h [") and rows["sasp-24h"]["GLUE"].startswith("- [")
    assert "sasp-24h did not complete (stop reason: preempted)" in md and "sasp-24h: GLUE not run" in md


def test_no_preln_run_leaves_speed_empty_one_seed_has_no_std_and_unknown_folder_is_an_error(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "sas-24h", "sas", seeds=(1,))
    out = tmp_path / "report"
    code, _, _ = report([str(root / "sas-24h"), "--out", str(out)])
    assert code == 0
    md = (out / "table1.md").read_text()
    assert pd.isna(pd.read_csv(out / "table1.csv").speed[0]) and "no Pre-LN run among the compared runs" in md
    sas = dict(zip(md_rows(md)[0], md_rows(md)[1]))
    assert re.fullmatch(r"78\.2 \[\d\]", sas["GLUE"]) and "sas-24h: one seed only, no std" in md  # 704 / 9 = 78.2
    # the std of one value is undefined: missing in the CSVs (never 0.0, which reads as perfectly stable)
    assert pd.isna(pd.read_csv(out / "table1.csv").glue_std[0]) and pd.isna(
        pd.read_csv(out / "table2.csv")["RTE std"][0]
    )
    code, _, stderr = report([str(tmp_path), "--out", str(out)])
    assert code == 2 and "not a run folder" in stderr


def test_a_damaged_summary_or_result_file_leaves_a_marked_row_and_the_rest_of_the_report(tmp_path):
    root = tmp_path / "runs"
    for name, block in [("preln-24h", "preln"), ("sas-24h", "sas"), ("sasp-24h", "sasp")]:
        make_run(root, name, block)
    (root / "sasp-24h/summary.json").write_text('{"name": "sasp-24h", "blo')  # cut short
    (root / "sas-24h/glue/rte/seed2.json").write_text("\x00\x00 not json")
    out = tmp_path / "report"
    code, _, stderr = report(["--runs-dir", str(root), "--out", str(out)])
    assert code == 0, stderr
    assert (
        f"{root / 'sasp-24h/summary.json'}: not valid JSON" in stderr
        and f"{root / 'sas-24h/glue/rte/seed2.json'}: not valid JSON" in stderr
    )
    t1 = pd.read_csv(out / "table1.csv")
    runs = t1[t1.kind == "run"].set_index("run")
    assert list(runs.index) == [
        "preln-24h",
        "sas-24h",
        "sasp-24h",
    ]  # the damaged run is still a row (block from config.yaml)
    assert runs.loc["sas-24h", "speed"] == pytest.approx(900 / 800) and runs.loc["preln-24h", "microbatch_steps"] == 800
    assert (
        pd.isna(runs.loc["sasp-24h", "microbatch_steps"])
        and "summary.json is unreadable" in runs.loc["sasp-24h", "notes"]
    )
    md = (out / "table1.md").read_text()
    rows = {r[1].split(" [")[0]: dict(zip(md_rows(md)[0], r)) for r in md_rows(md)[1:]}
    assert re.fullmatch(r"sasp-24h \[\d\]", rows["sasp-24h"]["Run"]) and rows["sasp-24h"]["Speed"].startswith("- [")
    t2 = pd.read_csv(out / "table2.csv")
    sas = t2[(t2.kind == "run") & (t2.run == "sas-24h")].iloc[0]
    assert sas["RTE n"] == 2 and "RTE: seed 2 unreadable (seed2.json: not valid JSON" in sas["notes"]
    assert "## Warnings" in (out / "index.md").read_text()


# ----------------------------------------------------------------------------------------------- paper-ready figures


def test_pdfs_embed_truetype_fonts_not_type3(paper_like):
    """Venues reject Type 3 fonts: every font dictionary of every PDF is TrueType (Type 42), its program embedded."""
    out, _, _ = paper_like
    pdfs = sorted(out.glob("*.pdf"))
    assert len(pdfs) >= 5
    for pdf in pdfs:
        data = pdf.read_bytes()
        subtypes = set(re.findall(rb"/Subtype\s*/(Type3|TrueType|Type1|Type0|CIDFontType2|CIDFontType0)", data))
        assert subtypes and subtypes <= {b"TrueType", b"Type0", b"CIDFontType2"}, (pdf.name, subtypes)
        assert b"/FontFile2" in data, pdf.name  # the TrueType program itself travels with the file


def overlapping_ticks(fig) -> list[tuple[str, str]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    clashes = []
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        clashes += [
            (labels[i].get_text(), labels[i + 1].get_text())
            for i in range(len(boxes) - 1)
            if boxes[i].x1 > boxes[i + 1].x0
        ]
    return clashes


def test_time_axes_read_in_minutes_below_an_hour_and_in_hours_above(tmp_path):
    from cramming_simple.report import plots
    from cramming_simple.report.load import load_runs

    loaded = load_runs([make_run(tmp_path, "preln-smoke", "preln", glue=False)])  # 39 minutes of metrics
    for figure in (
        plots.loss_figure(loaded.runs, loaded.metrics, "hours"),
        plots.schedule_figure(loaded.runs, loaded.metrics),
    ):
        ax = figure.axes[-1]
        assert ax.get_xlabel() == "wall-clock training time (minutes)"
        assert 30 <= ax.get_xlim()[1] <= 45 and not overlapping_ticks(figure)
    day = loaded.metrics.assign(elapsed_s=loaded.metrics.elapsed_s * 37)  # the same curve over 24 hours
    figure = plots.loss_figure(loaded.runs, day, "hours")
    assert figure.axes[0].get_xlabel() == "wall-clock training time (hours)"
    assert 20 <= figure.axes[0].get_xlim()[1] <= 26 and len(figure.axes[0].get_xticks()) <= 8
    assert not overlapping_ticks(figure)
    steps = plots.loss_figure(
        loaded.runs, loaded.metrics.assign(microbatch_steps=loaded.metrics.microbatch_steps * 3000), "steps"
    )
    assert not overlapping_ticks(steps)


def test_glue_figure_has_one_labelled_panel_per_kind_of_metric(tmp_path):
    from cramming_simple.reference import load_reference, published_rows
    from cramming_simple.report import plots
    from cramming_simple.report.load import load_runs

    loaded = load_runs([make_run(tmp_path, "preln-24h", "preln"), make_run(tmp_path, "sas-24h", "sas")])
    figure = plots.glue_figure(loaded.runs, loaded.glue, published_rows(load_reference("he2023")[1]))
    panels = {ax.get_ylabel(): [t.get_text() for t in ax.get_xticklabels()] for ax in figure.axes}
    assert panels == {
        "accuracy (%)": ["MNLI-m", "MNLI-mm", "SST-2", "RTE", "QNLI"],
        "Pearson r (x100)": ["STS-B"],
        "F1 (%)": ["QQP", "MRPC"],
        "Matthews corr. (x100)": ["CoLA"],
    }
    assert not overlapping_ticks(figure)


# ----------------------------------------------------------------------------------------------- LaTeX that fits

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
