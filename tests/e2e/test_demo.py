"""End to end: `make demo`, the newcomer's first command, offline (GLUE from a TSV fixture via GLUE_DIR), and `make
all`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WORDS
from helpers.glue_data import make_glue, write_tsv

from cramming_simple.presets import CHECKOUT as REPO_ROOT

BLOCKS = ("preln", "sas")  # make demo runs three; two take the same loops (CI time)


def glue_fixture(root: Path) -> Path:
    return write_tsv(make_glue({"default": 48, "sst2": 96}, n_eval=32, words=(WORDS[:4], WORDS[4:8], WORDS[8:])), root)


def make(target: str, *variables: str) -> subprocess.CompletedProcess:
    """`make TARGET` in the repository, with the test's own environment standing in for .venv."""
    venv = Path(sys.prefix)
    cmd = ["make", "--no-print-directory", "-o", str(venv / ".installed"), target, f"VENV={venv}", *variables]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_make_demo_runs_end_to_end_offline(smoke_cache, tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "report"
    done = make(
        "demo",
        f"DEMO_RUNS={runs}",
        f"DEMO_OUT={out}",
        f"GLUE_DIR={glue_fixture(tmp_path / 'glue')}",
        f"DEMO_BLOCKS={' '.join(BLOCKS)}",
        "DEMO_TASKS=rte",  # one task: the loop over tasks is glue's own, tested there
        f"DEMO_ARGS=hours=0.0015 data.cache_dir={smoke_cache} impl.device=cpu",  # a few seconds per block
        "DEMO_BENCH_ARGS=--arch tiny --batch 8 --steps 2 --warmup 1",
    )
    assert f"Tables and plots: {out}/index.md" in done.stdout
    # beside its table, the demo prints the side-by-side bench of the same blocks on the same machine
    table_at, bench_at = done.stdout.index("| Block | Run | GLUE"), done.stdout.index("Side by side on this machine")
    assert table_at < bench_at and (out / "bench" / "bench.md").exists()
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert {r["name"] for r in bench["rows"]} >= set(BLOCKS)
    for block in BLOCKS:
        summary = json.loads((runs / f"{block}-smoke" / "summary.json").read_text())
        assert summary["completed"] and summary["block"] == block
        glue = json.loads((runs / f"{block}-smoke" / "glue" / "summary.json").read_text())
        assert glue["protocol"] == "smoke" and glue["columns"]["RTE"]["n"] == 1
    table1 = (out / "table1.md").read_text()
    assert all(title in table1 for title in ("Pre-LN", "SAS"))
    for name in ("table1.tex", "table1.csv", "table2.md", "loss_vs_hours.png", "loss_vs_steps.pdf", "glue_tasks.png"):
        assert (out / name).stat().st_size > 0, name
    exported = out / "export" / f"{BLOCKS[0]}-smoke"  # and the first block as a Hugging Face folder with its card
    assert f"{exported}/README.md" in done.stdout and (exported / "modeling_cramming_simple.py").is_file()
    assert "## GLUE (this pretrained model)" in (exported / "README.md").read_text()


@pytest.mark.slow  # 45 s: the Makefile's loop over what make demo (above) and the skip tests already run
def test_make_all_runs_every_stage_with_pretraining_seeds_and_a_rerun_skips_what_is_done(smoke_cache, tmp_path):
    """`make all` pretrains each block once per seed, fine-tunes every run, and reports the replicates folded into
    one row; run again, it finds everything done (one test: each `make all` costs a dozen processes)."""
    runs, out = tmp_path / "runs", tmp_path / "report"
    variables = [
        "BLOCKS=sasp",
        "BUDGET=smoke",
        "PRETRAIN_SEEDS=0 1",
        "PROTOCOL=smoke",
        "TASKS=rte",
        f"RUNS={runs}",
        f"OUT={out}",
        f"GLUE_DIR={glue_fixture(tmp_path / 'glue')}",
        f"ARGS=hours=0.0006 data.cache_dir={smoke_cache} impl.device=cpu",
    ]
    done = make("all", *variables)
    for seed in (0, 1):
        run = runs / f"sasp-smoke-s{seed}"
        assert json.loads((run / "summary.json").read_text())["completed"]
        assert "seed: " + str(seed) in (run / "config.yaml").read_text()
        assert (run / "glue" / "rte" / "seed1.json").exists()
    assert (out / "table1.md").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    table1 = (out / "table1.md").read_text()
    assert "SAS-P" in table1
    assert "sasp-smoke-s0 + sasp-smoke-s1" in table1 and "2 pretraining seeds (0,1)" in table1
    again = make("all", *variables).stdout
    assert again.count("is complete; nothing to do") == 2 and again.count("0 of 1 task/seed runs to do") == 2
