"""cramming_simple/report/load.py: which runs are one row, which are refused, and what old run folders still give."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers.commands import one_error_line
from helpers.runs import make_run, md_rows, report


def with_config(run, block, seed, lr=0.001):
    (run / "config.yaml").write_text(
        f"name: {run.name}\nblock: {block}\nbudget: 24h\nhours: 24\ntrain:\n  seed: {seed}\n  lr: {lr}\n"
    )


def test_runs_that_differ_only_in_the_training_seed_are_one_row(tmp_path):
    root = tmp_path / "runs"
    import cramming_simple.report.load as load

    for block in ("preln", "sas"):
        for seed in (0, 1):
            run = make_run(root, f"{block}-s{seed}", block)
            summary = json.loads((run / "summary.json").read_text())
            summary["microbatch_steps"] += 5 * seed  # the second pretraining seed ran 5 more steps
            summary["eval_loss"] = 2.0 + seed / 10
            (run / "summary.json").write_text(json.dumps(summary))
            with_config(run, block, seed)
    with_config(make_run(root, "sas-lr", "sas"), "sas", 0, lr=0.003)  # another learning rate: its own row
    loaded = load.load_runs([root / n for n in ("preln-s0", "preln-s1", "sas-s0", "sas-s1", "sas-lr")])
    groups, pooled = load.replicates(loaded.runs, loaded.glue)
    assert list(groups.replicates) == [2, 2, 1]
    sas = groups.iloc[1]
    assert sas.members == ["sas-s0", "sas-s1"] and sas.train_seeds == (0, 1)
    assert len(sas.glue_values) == 6 and sas.glue_n == 6  # 2 pretraining x 3 fine-tuning seeds
    # seeds and hashes travel as tuples, never as joined strings to be split again
    assert (
        isinstance(sas.glue_seeds, tuple)
        and len(sas.glue_seeds) == 6
        and all(isinstance(s, int) for s in sas.glue_seeds)
    )
    assert all(
        isinstance(r.glue_protocol_hash, tuple) and isinstance(r.glue_models, tuple) for _, r in loaded.runs.iterrows()
    )
    assert sas.glue_mean == pytest.approx(np.mean(sas.glue_values)) and sas.eval_loss == pytest.approx(2.05)
    mnli = pooled[(pooled.run == sas.name) & (pooled.column == "MNLI-m")].iloc[0]
    assert mnli.n == 6 and mnli["mean"] == pytest.approx(79 + 2)

    code, _, err = report(["--runs-dir", str(root), "--out", str(tmp_path / "out")])
    assert code == 0, err
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv")
    runs = t1[t1.kind == "run"].set_index("run")
    row = runs.loc["sas-s0 + sas-s1"]
    ratios = [900 / 802.5, 905 / 802.5]  # each sas run over the mean of the Pre-LN replicates (800, 805)
    assert row.replicates == 2 and row.glue_n == 6 and row.microbatch_steps == 902.5
    assert (row.speed, row.speed_std) == pytest.approx((np.mean(ratios), np.std(ratios, ddof=1)))
    md = (tmp_path / "out" / "table1.md").read_text()
    cells = {r[1]: dict(zip(md_rows(md)[0], r)) for r in md_rows(md)[1:]}
    assert "2 pretraining seeds (0,1)" in md and cells["sas-lr"]["Microbatch steps"] == "900"
    assert re.match(r"902\.5", next(c for n, c in cells.items() if n.startswith("sas-s0 + sas-s1"))["Microbatch steps"])


def test_same_seed_runs_are_counted_once_and_a_backup_copy_is_no_error(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "preln-24h", "preln")
    make_run(runs, "sas-24h", "sas")
    shutil.copytree(runs / "sas-24h", runs / "sas-24h.bak")  # cp -a: its files still say sas-24h
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r")])
    assert code == 0, err
    warned = [line for line in err.splitlines() if "same pretraining seed" in line]
    assert len(warned) == 1 and "sas-24h.bak" in warned[0] and "counted" in warned[0]
    table1 = pd.read_csv(tmp_path / "r" / "table1.csv")
    sas = table1[(table1.kind == "run") & (table1.block == "sas")]
    assert len(sas) == 1 and sas.replicates.iloc[0] == 1 and sas.glue_n.iloc[0] == 3


def test_runs_that_read_different_ids_under_one_data_key_are_refused(tmp_path):
    runs = tmp_path / "runs"
    for name, block, tokenizer in (("preln-24h", "preln", "a" * 64), ("sas-24h", "sas", "b" * 64)):
        run = make_run(runs, name, block)
        summary = json.loads((run / "summary.json").read_text())
        summary["data"]["tokenizer_sha256"] = tokenizer
        (run / "summary.json").write_text(json.dumps(summary))
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r")])
    assert code == 2 and "tokenizer differs" in one_error_line(err)


def test_replicates_compare_a_user_blocks_source_but_not_a_builtins_record():
    from cramming_simple.report.load import experiment_key

    old = {"block": "sas", "train": {"lr": 3e-3, "seed": 0}}  # a run from before blocks were recorded
    new = {**old, "block_source": None, "train": {"lr": 3e-3, "seed": 1}}  # as config.yaml records a built-in
    assert experiment_key(old, {"block": "sas"}) == experiment_key(new, {"block": "sas"})
    mine = {"block": "/x/b.py:B", "block_source": {"kind": "file", "path": "/x/b.py", "class": "B", "sha256": "a" * 64}}
    edited = {**mine, "block_source": {**mine["block_source"], "sha256": "b" * 64}}
    assert experiment_key(mine, {"block": "/x/b.py:B"}) != experiment_key(edited, {"block": "/x/b.py:B"})
