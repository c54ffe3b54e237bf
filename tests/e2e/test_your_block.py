"""End to end with a user's own block: pretrain, glue, report and bench; a changed block file; the shipped examples."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import pretrain_args
from helpers.blocks import BLOCK_SOURCE, EXAMPLES
from helpers.commands import cli
from helpers.glue_data import make_glue, sentiment_words, write_parquet

from cramming_simple.cli import main
from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.folders import load_model
from cramming_simple.model import block_spec


@pytest.fixture(scope="module")
def user_run(smoke_cache, block_file, tmp_path_factory) -> Path:
    """A smoke-pretrained run of the user's Scaled block, started from the command line."""
    runs = tmp_path_factory.mktemp("user-runs")
    code = main(pretrain_args(smoke_cache, runs, "hours=0.0015", block=f"{block_file}:Scaled"))
    assert code == 0
    return runs / "scaled-smoke"


def test_a_user_block_goes_through_pretrain_glue_report_and_bench(user_run, block_file, pretrained_run, tmp_path):
    summary = json.loads((user_run / "summary.json").read_text())
    assert summary["completed"] and summary["block"] == f"{block_file}:Scaled"
    assert summary["block_title"] == "Scaled Pre-LN" and summary["block_source"]["kind"] == "file"
    config = json.loads((user_run / "model" / "config.json").read_text())
    assert config["block_source"]["sha256"] == summary["block_source"]["sha256"]
    assert (user_run / "model" / "block.py").read_text() == BLOCK_SOURCE  # the saved model embeds its source

    words = sentiment_words(load_tokenizer(user_run / "model"))
    glue_dir = write_parquet(make_glue({"default": 48}, n_eval=32, words=words), tmp_path / "glue")
    code, out, err = cli(
        "glue",
        str(user_run),
        "--data-dir",
        str(glue_dir),
        "--protocol",
        "smoke",
        "--tasks",
        "rte",
        "--seeds",
        "1",
        "epochs=1",
    )
    assert code == 0, err
    assert (user_run / "glue" / "rte" / "seed1.json").exists()

    code, _, err = cli("report", str(pretrained_run), str(user_run), "--out", str(tmp_path / "report"))
    assert code == 0, err
    table1 = (tmp_path / "report" / "table1.md").read_text()
    assert "Scaled Pre-LN" in table1 and "Pre-LN" in table1
    table2 = pd.read_csv(tmp_path / "report" / "table2.csv")
    assert "Scaled Pre-LN" in set(table2.astype(str).values.ravel())
    index = (tmp_path / "report" / "index.md").read_text()
    assert "at-init figure" not in index  # the user's block was loaded again for the figure, no warning

    code, out, err = cli(
        "bench",
        "--arch",
        "tiny",
        "--blocks",
        f"{block_file}:Scaled",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--out",
        str(tmp_path / "bench"),
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [r["title"] for r in rows] == ["Pre-LN", "Scaled Pre-LN"]
    assert "| Scaled Pre-LN |" in (tmp_path / "bench" / "bench.md").read_text()


def test_changing_the_block_file_after_pretraining_is_refused(user_run, block_file, smoke_cache, tmp_path):
    original = block_file.read_text()
    try:
        block_file.write_text(original.replace("0.5 * self.mlp", "0.25 * self.mlp"))
        for argv in (
            ["glue", str(user_run), "--protocol", "smoke", "--tasks", "rte", "--data-dir", str(tmp_path)],
            pretrain_args(smoke_cache, user_run.parent, "--resume", block=f"{block_file}:Scaled"),
            ["report", str(user_run), "--out", str(tmp_path / "report")],
        ):
            code, _, err = cli(*argv)
            assert code == 2, (argv[0], err)
            assert "changed since pretraining" in err and len(err.strip().splitlines()) == 1, err
        # the file gone altogether (the model copied to another machine): the embedded source, proven by its hash
        block_file.unlink()
        model = load_model(user_run / "model")
        assert model.encoder.spec.source_text == original and model.encoder.spec.title == "Scaled Pre-LN"
    finally:
        block_file.write_text(original)
    assert isinstance(load_model(user_run / "model"), torch.nn.Module)


# ReZero's pretraining is slow-marked (the same path as RMSNorm's; model/test_blocks.py tests its identity at init)
@pytest.mark.parametrize("ref", [pytest.param("rezero.py:ReZero", marks=pytest.mark.slow), "rmsnorm.py:PreRMSNorm"])
def test_the_examples_pretrain_on_the_smoke_budget(ref, smoke_cache, tmp_path):
    code, _, err = cli(*pretrain_args(smoke_cache, tmp_path, "hours=0.002", block=f"{EXAMPLES / ref}"))
    assert code == 0, err
    (run,) = tmp_path.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    held_out = [m["eval_loss"] for m in metrics if m.get("kind") == "eval"]  # at the start and at the end
    assert summary["completed"] and summary["block_title"] == block_spec(str(EXAMPLES / ref)).title
    # it learns: the budget is wall-clock, so a slow machine takes fewer steps (21 on a loaded 2-core CI, 0.26 down)
    assert len(held_out) >= 2 and held_out[-1] < held_out[0] - 0.15 and min(held_out) == held_out[-1], held_out
