"""cramming_simple/commands/glue.py: what `glue` leaves on disk (summaries, cards, the commands that made them), and
GLUE of the snapshots along the budget."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import smoke_config
from helpers.commands import QUICK_GLUE
from helpers.glue_data import copy_run, make_glue, write_tsv
from helpers.runs import make_run, report

from cramming_simple.cli import main
from cramming_simple.train.loop import pretrain


def test_snapshots_are_fine_tuned_with_glue_at_and_drawn_against_the_budget(smoke_cache, tmp_path):

    cfg = smoke_config(smoke_cache, "preln", 4.0, "impl.keep_at=[0.25,0.5]", "impl.eval_minutes=0", name="snap")
    pretrain(cfg, tmp_path)
    run = tmp_path / "snap"
    assert (run / "model@0.25" / "model.safetensors").exists() and (run / "model@0.50" / "config.json").exists()
    from conftest import WORDS

    glue = write_tsv(make_glue({"default": 32}, n_eval=16, words=(WORDS[:4], WORDS[4:8], WORDS[8:])), tmp_path / "glue")
    args = ["glue", str(run), "--data-dir", str(glue), "--protocol", "smoke", "--tasks", "rte", "epochs=1"]
    assert main([*args, "--at", "0.5"]) == 0
    assert (run / "glue@0.50" / "rte" / "seed1.json").exists() and not (run / "glue").exists()
    record = json.loads((run / "glue@0.50" / "rte" / "seed1.json").read_text())
    assert (run / "glue@0.50" / "rte" / "seed1.predictions.npz").exists() and record["status"] == "ok"
    assert main([*args, "--at", "0.75"]) == 2  # no such snapshot: a clear error, no training

    # the report draws GLUE average against the budget fraction for runs whose snapshots were scored
    root = tmp_path / "paper"
    full = make_run(root, "preln-24h", "preln")
    shutil.copytree(full / "glue", full / "glue@0.50")
    for f in (full / "glue@0.50").glob("*/seed*.json"):
        r = json.loads(f.read_text())
        r["metrics"] = {s: {m: v - 0.05 for m, v in ms.items()} for s, ms in r["metrics"].items()}
        f.write_text(json.dumps(r))
    code, _, err = report(["--runs-dir", str(root), "--out", str(tmp_path / "out")])
    assert code == 0, err
    assert (tmp_path / "out" / "glue_vs_budget.png").stat().st_size > 0
    from cramming_simple.report.load import load_runs

    points = load_runs([full]).budget_glue.set_index("fraction")["mean"]
    assert list(points.index) == [0.5, 1.0] and points[1.0] - points[0.5] == pytest.approx(5.0)


def test_summary_and_card_hold_every_result_on_disk_and_the_commands_that_made_them(
    pretrained_run, glue_parquet, tmp_path
):
    run = copy_run(pretrained_run, tmp_path)
    for src in ("summary.json", "config.yaml"):
        shutil.copy(pretrained_run / src, run / src)
    data = ["--data-dir", str(glue_parquet), "--protocol", "smoke", "--seeds", "1"]
    assert main(["glue", str(run), "--tasks", "sst2,stsb", *data, *QUICK_GLUE]) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = run / "glue" / "sst2" / f".seed1.predictions.npz.{int(dead.stdout)}-0a1b2c.tmp"  # a killed writer's
    left.write_bytes(b"half")
    assert main(["glue", str(run), "--tasks", "rte", *data, *QUICK_GLUE]) == 0  # a rerun of one task
    assert not left.exists()
    summary = json.loads((run / "glue" / "summary.json").read_text())
    assert {c: summary["columns"][c]["n"] for c in ("SST-2", "STS-B", "RTE")} == {"SST-2": 1, "STS-B": 1, "RTE": 1}
    assert summary["tasks"] == ["sst2", "stsb", "rte"]
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "e")]) == 0
    card = (tmp_path / "e" / "README.md").read_text()
    header = next(line for line in card.splitlines() if line.startswith("| SST-2"))
    assert header.startswith("| SST-2 | STS-B | RTE | GLUE |")
    glue_lines = [line for line in card.splitlines() if line.startswith("cramming-simple glue")]
    assert len(glue_lines) == 1, glue_lines
    for part in ("--protocol smoke", f"--data-dir {glue_parquet}", "--tasks sst2,stsb,rte", "--seeds 1", *QUICK_GLUE):
        assert part in glue_lines[0], (part, glue_lines[0])

    from huggingface_hub import ModelCard

    meta = ModelCard.load(tmp_path / "e" / "README.md").data
    assert meta.license == "mit" and meta.pipeline_tag == "fill-mask"
    scores = {r.dataset_config: r.metric_value for r in meta.eval_results}
    assert scores["rte"] == round(summary["columns"]["RTE"]["mean"], 2) and set(scores) == {"sst2", "stsb", "rte"}
    assert oct((tmp_path / "e" / "model.safetensors").stat().st_mode & 0o777) == "0o644"
    assert all(p.stat().st_mode & 0o644 == 0o644 for p in (tmp_path / "e").iterdir())

    fresh = copy_run(pretrained_run, tmp_path / "fresh")  # no GLUE yet: the card says how to run it
    assert main(["-q", "export", str(fresh), "--out", str(tmp_path / "f")]) == 0
    assert f"cramming-simple glue {fresh} --protocol paper" in (tmp_path / "f" / "README.md").read_text()
