"""cramming_simple/report/tables.py: the numbers in Tables 1 to 3, their formats, and what they mark."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from helpers.runs import BASE, OFFSET, make_run, md_rows, report, tex_rows

from cramming_simple.glue.tasks import COLUMNS
from cramming_simple.report import stats


def test_report_marks_differences_within_noise_in_md_tex_and_csv(two_blocks_with_predictions, tmp_path):
    root, runs, _ = two_blocks_with_predictions
    code, _, err = report(["--runs-dir", str(root), "--out", str(tmp_path / "out")])
    assert code == 0, err
    out = tmp_path / "out"
    t1 = pd.read_csv(out / "table1.csv").set_index("run")
    # make_run gives every run the same seed offsets: sas - preln = mean base difference, Welch over the 3 seeds
    per_seed = {
        b: [np.mean([v + OFFSET[s] for v in base]) for s in OFFSET]
        for b, base in (("preln", [80, 81, 90, 86, 60, 88, 87, 88, 50]), ("sas", [79, 80, 91, 84, 58, 87, 86, 87, 52]))
    }
    expected = stats.welch(per_seed["sas"], per_seed["preln"])
    row = t1.loc["sas-24h"]
    assert (row.glue_vs_preln, row.glue_vs_preln_low, row.glue_vs_preln_high) == pytest.approx(
        (expected.diff, expected.low, expected.high)
    )
    assert bool(row.glue_within_noise) and row.glue_baseline == "preln-24h"
    md = (out / "table1.md").read_text()
    cells = {r[1]: dict(zip(md_rows(md)[0], r)) for r in md_rows(md)[1:]}
    cell = cells["sas-24h"]["vs Pre-LN (95 % CI)"]
    mark = re.fullmatch(r"-0\.7 \[-\d\.\d, \+\d\.\d\] \[(\d+)\]", cell).group(1)
    assert re.search(rf"^\[{mark}\] 95 % interval contains 0: within noise", md, re.M)
    assert cells["preln-24h"]["vs Pre-LN (95 % CI)"] == "ref"
    assert md_rows(md) == tex_rows((out / "table1.tex").read_text())
    # Table 2: a Welch row per run beside Pre-LN; Table 3: the bootstrap, in all three formats
    t2 = pd.read_csv(out / "table2.csv")
    vs = t2[t2.kind == "vs_preln"].iloc[0]
    assert vs["MNLI-m"] == pytest.approx(-1.0) and bool(vs["MNLI-m within_noise"])
    t3 = (out / "table3.md").read_text()
    assert md_rows(t3) == tex_rows((out / "table3.tex").read_text())
    assert len(pd.read_csv(out / "table3.csv")) == 1 and "paired bootstrap" in (out / "index.md").read_text()


def test_unsteady_throughput_gets_a_footnote_pointing_to_bench(tmp_path):
    root = tmp_path / "runs"
    for block in ("preln", "sas"):
        run = make_run(root, f"{block}-24h", block)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()[:-1]]
        for i, r in enumerate(rows):
            r["tokens_per_s"] = 1000.0 if block == "preln" else 1120.0  # steady: 1.12, like the step ratio 900/800
            if block == "sas" and 10 <= i < 25:
                r["tokens_per_s"] = 500.0  # a planted slowdown: something else ran on the machine
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = report(["--runs-dir", str(root), "--out", str(tmp_path / "out")])
    assert code == 0, err
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv").set_index("run")
    assert t1.loc["preln-24h", "rate_cv"] == 0 and t1.loc["sas-24h", "rate_cv"] > 0.10
    md = (tmp_path / "out" / "table1.md").read_text()
    cells = {r[1]: dict(zip(md_rows(md)[0], r)) for r in md_rows(md)[1:]}
    mark = re.fullmatch(r"1\.12 \[(\d+)\]", cells["sas-24h"]["Speed"]).group(1)
    note = re.search(rf"^\[{mark}\] (.*)$", md, re.M).group(1)
    assert "not steady" in note and "sas-24h's tokens/s varied" in note and "make bench" in note
    assert cells["preln-24h"]["Speed"] == "1.00"  # steady, and the two ratios agree: no footnote
    assert t1.loc["sas-24h", "speed_rate"] == pytest.approx(np.median([1120.0] * 24 + [500.0] * 15) / 1000)


LABELS = [c.label for c in COLUMNS]  # MNLI-m, MNLI-mm, SST-2, STS-B, RTE, QNLI, QQP, MRPC, CoLA


PAPER_GLUE = {"preln": 78.9, "sas": 78.4, "sasp": 78.3}


PAPER_T2 = {
    "preln": [81.2, 81.6, 89.9, 87.6, 56.3, 88.9, 87.1, 88.3, 49.4],
    "sas": [79.7, 80.1, 90.3, 84.7, 58.4, 87.5, 86.8, 87.5, 50.6],
}


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
