"""cramming_simple/report/build.py: the report stage: the index, warnings, damaged inputs, and the command line.

Run folders are written here with known values; every expected number is worked out by hand."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from conftest import hold_lock
from helpers.runs import make_run, md_rows, report


def test_the_report_names_live_runs_running_and_warns_of_missing_pieces(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "preln-24h", "preln")
    live = make_run(runs, "sas-24h", "sas", completed=False)
    summary = json.loads((live / "summary.json").read_text())
    summary["stop_reason"] = None  # between two checkpoints of a live run
    (live / "summary.json").write_text(json.dumps(summary))
    odd = make_run(runs, "odd-24h", "preln")
    (odd / "config.yaml").unlink()
    summary = json.loads((odd / "summary.json").read_text())
    (odd / "summary.json").write_text(json.dumps({**summary, "block": "mystery"}))
    early = make_run(runs, "sasp-24h", "sasp", glue=False)  # live, before its first checkpoint: no summary yet
    (early / "summary.json").unlink()
    holders = [hold_lock(run / ".lock", "cramming-simple pretrain") for run in (live, early)]
    try:
        code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r")])
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert code == 0, err
    index = (tmp_path / "r" / "index.md").read_text()
    assert "stop reason: nan" not in index and "profile nan" not in index
    for name in ("sas-24h", "sasp-24h"):
        line = next(line for line in index.splitlines() if line.startswith(f"- **{name}**"))
        assert "stop reason: running" in line, line
    assert sum("odd-24h has no config.yaml" in line for line in err.splitlines()) == 1
    assert sum("unknown block 'mystery'" in line for line in err.splitlines()) == 1
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r2")])
    index = (tmp_path / "r2" / "index.md").read_text()
    assert "stop reason: killed" in index and "sasp-24h" not in index  # no one trains it: not a run to report


def test_a_short_run_is_not_set_against_the_published_numbers(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "preln-smoke", "preln", budget="smoke", hours=0.033, skip=[("cola", s) for s in (1, 2, 3)])
    make_run(runs, "sas-smoke", "sas", budget="smoke", hours=0.033, skip=[("cola", s) for s in (1, 2, 3)])
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r")])
    assert code == 0, err
    table1 = (tmp_path / "r" / "table1.md").read_text()
    assert "Δ GLUE" not in table1 and "no Δ vs published" in table1
    table2 = (tmp_path / "r" / "table2.md").read_text()
    assert not [r for r in md_rows(table2) if r[1] == "Δ vs published"] and "CoLA" not in md_rows(table2)[0]
    make_run(runs, "sas-24h", "sas")  # a run of the published budget: compared, the others not
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r3")])
    rows = md_rows((tmp_path / "r3" / "table2.md").read_text())
    deltas = [r for r in rows if r[1] == "Δ vs published"]
    assert len(deltas) == 1 and "CoLA" in rows[0]


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
