"""Evidence beside the tables: the held-out loss, the inside of the blocks, intervals, replicates, honest speed,
GLUE across the budget (docs/design.md)."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMOKE_VOCAB, smoke_config
from helpers.runs import OFFSET, make_run, md_rows, report, tex_rows
from scipy import stats as scipy_stats

from cramming_simple.cli import main
from cramming_simple.data import MLMCollator, PackedData, Split, load_tokenizer, prepared_path
from cramming_simple.data.sources import DataConfig
from cramming_simple.folders import load_model
from cramming_simple.glue.metrics import compute
from cramming_simple.glue.tasks import COLUMNS
from cramming_simple.model import BLOCKS, MaskedLM, arch_config
from cramming_simple.model.diagnostics import measure
from cramming_simple.model.layers import Attention
from cramming_simple.report import stats
from cramming_simple.report.paired import paired_table
from cramming_simple.train.config import PretrainConfig
from cramming_simple.train.distributed import Dist
from cramming_simple.train.evaluate import HeldOut
from cramming_simple.train.loop import pretrain

# ------------------------------------------------------------------------------------------ held-out loss


def smoke_data(cache) -> PackedData:
    return PackedData(
        prepared_path(DataConfig(source="builtin", cache_dir=str(cache), shard_sequences=1024), SMOKE_VOCAB, 128)
    )


def collator(data: PackedData, seed: int) -> MLMCollator:
    tok = load_tokenizer(data.root / "tokenizer")
    return MLMCollator(128, 0.25, tok.mask_token_id, tok.all_special_ids, len(tok), seed)


def test_heldout_rows_never_reach_the_training_stream_and_are_the_same_for_every_run(smoke_cache):
    from cramming_simple.data import MicrobatchStream

    data = smoke_data(smoke_cache)
    split = Split.of(data, 2048)
    assert split.held == min(2048, len(data) // 10) > 0
    held = set(split.heldout_rows().tolist())
    assert len(held) == split.held and held == set(Split.of(smoke_data(smoke_cache), 2048).heldout_rows().tolist())
    for seed in (0, 7):  # two training seeds, two epochs each: every training row twice, no held-out row ever
        stream = MicrobatchStream(data, collator(data, seed), microbatch=64, seed=seed, split=split)
        rows = stream.rows_of(np.arange(2 * split.train_size))
        assert not held & set(rows.tolist())
        assert np.bincount(rows, minlength=len(data))[sorted(set(range(len(data))) - held)].tolist() == [2] * (
            len(data) - split.held
        )
    # holdout=0 reads every row, as runs before held-out evaluation did
    no_split = Split.of(data, 0)
    assert no_split.held == 0 and np.array_equal(no_split.train_rows(np.arange(10)), np.arange(10))


def test_heldout_loss_scores_the_same_masks_for_any_training_seed_and_is_deterministic(smoke_cache):
    data = smoke_data(smoke_cache)
    split = Split.of(data, 64)
    a = HeldOut(data, split, collator(data, seed=0), 16, Dist(), torch.device("cpu"), None)
    b = HeldOut(data, split, collator(data, seed=9), 16, Dist(), torch.device("cpu"), None)
    assert len(a.batches) == 4 and all(
        torch.equal(x[k], y[k]) for x, y in zip(a.batches, b.batches) for k in ("input_ids", "positions", "labels")
    )
    torch.manual_seed(0)
    model = MaskedLM(arch_config("tiny"), "sas")
    first, second = a.loss(model), b.loss(model)
    assert first == second and math.isfinite(first) and model.training  # back in training mode afterwards
    # the token-weighted mean over all masked tokens of the slice
    with torch.no_grad():
        total = sum(float(model.eval()(**x)) * int((x["labels"] != -100).sum()) for x in a.batches)
    count = sum(int((x["labels"] != -100).sum()) for x in a.batches)
    model.train()
    assert first == pytest.approx(total / count, rel=1e-6)


def test_pretraining_records_eval_loss_diagnostics_and_snapshots_outside_the_budget(smoke_cache, tmp_path):
    seconds = 6.0
    cfg = smoke_config(smoke_cache, "sas", seconds, "impl.eval_minutes=0.03", "impl.keep_at=[0.5]", "data.holdout=128")
    summary = pretrain(cfg, tmp_path)
    run = tmp_path / cfg.name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("kind") == "eval"]
    train = [r for r in rows if "kind" not in r]
    assert train and all("loss" in r for r in train)
    # the first eval scores the model at init, the last one the final model (the weights after the last update)
    assert evals[0]["microbatch_steps"] == 0 and evals[-1]["optimizer_steps"] == summary["optimizer_steps"]
    assert len(evals) >= 3 and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert summary["eval_loss"] == evals[-1]["eval_loss"] and summary["eval_sequences"] == 128
    # evaluation time is paused time: the budget is still met, with the eval seconds on top
    assert summary["eval_s"] > 0 and summary["elapsed_s"] <= seconds * 1.05 + 0.5
    diagnostics = [json.loads(line) for line in (run / "diagnostics.jsonl").read_text().splitlines()]
    assert [d["microbatch_steps"] for d in diagnostics] == [e["microbatch_steps"] for e in evals]
    layer = diagnostics[-1]["layers"][1]
    assert {"cos", "kurtosis", "norm", "entropy", "attn_in_cos", "attn_out_cos", "scalars"} <= set(layer)
    assert len(layer["entropy"]) == cfg.arch.heads and {"beta_sa", "alpha_ff", "beta_ff", "attn.alpha"} <= set(
        layer["scalars"]
    )
    assert {"attn.value_alpha", "attn.value_beta"} <= set(diagnostics[-1]["layers"][0]["scalars"])
    snap = summary["snapshots"]["0.50"]
    assert snap["dir"] == "model@0.50" and 0 < snap["microbatch_steps"] < summary["microbatch_steps"]
    assert abs(snap["elapsed_s"] - 0.5 * seconds) < 1.5
    assert isinstance(load_model(run / "model@0.50"), MaskedLM)


def test_a_run_started_before_heldout_evaluation_resumes_on_its_own_stream(smoke_cache, tmp_path):
    cfg = smoke_config(smoke_cache, "preln", 2.0, name="old")
    run = tmp_path / "old"
    run.mkdir()
    from cramming_simple.config import to_yaml

    text = re.sub(r"^  holdout: \d+\n", "", to_yaml(cfg), flags=re.M)
    assert "holdout" not in text
    (run / "config.yaml").write_text(text)
    assert PretrainConfig.from_run(run).data.holdout == 0
    (run / "config.yaml").write_text(to_yaml(cfg))
    assert PretrainConfig.from_run(run).data.holdout == 2048


# ------------------------------------------------------------------------------------------ inside the blocks

SHAPED = ["sas", "sasp", "sasp-nonorm", "vskipinit"]


@pytest.mark.parametrize("block", SHAPED)
def test_shaped_attention_is_the_identity_at_init_with_uniform_attention(block):
    cfg = arch_config("tiny")
    torch.manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (3, cfg.seq_len))
    measured = measure(MaskedLM(cfg, block), ids)
    assert len(measured["layers"]) == cfg.depth
    for layer in measured["layers"]:
        assert layer["attn_out_cos"] == pytest.approx(layer["attn_in_cos"], abs=1e-5)  # the sub-block is the identity
        assert layer["entropy"] == pytest.approx([math.log(cfg.seq_len)] * cfg.heads, abs=1e-5)  # W^Q = 0: uniform


def test_standard_attention_is_not_the_identity_at_init():
    cfg = arch_config("tiny")
    torch.manual_seed(0)
    measured = measure(MaskedLM(cfg, "preln"), torch.randint(5, cfg.vocab_size, (3, cfg.seq_len)))
    layer = measured["layers"][0]
    assert layer["attn_out_cos"] > layer["attn_in_cos"] + 0.3  # near-uniform attention averages tokens together
    assert all(h < math.log(cfg.seq_len) for h in layer["entropy"])


class NoSkip(torch.nn.Module):
    """Plain attention with no skip and no norm: the stack that collapses in rank with depth."""

    def __init__(self, cfg, layer):
        super().__init__()
        self.attn = Attention(cfg)

    def forward(self, x, mask):
        return self.attn(x, mask)


def test_a_stack_without_skips_collapses_with_depth_at_init_and_the_diagnostics_show_it(monkeypatch):
    from dataclasses import replace

    from cramming_simple.model.blocks import BlockSpec

    monkeypatch.setitem(BLOCKS, "noskip", BlockSpec(NoSkip, "no skip"))
    cfg = replace(arch_config("tiny"), depth=6)
    torch.manual_seed(0)
    ids = torch.randint(5, cfg.vocab_size, (3, cfg.seq_len))
    collapsed = measure(MaskedLM(cfg, "noskip"), ids)
    cos = [collapsed["embedding"]["cos"]] + [layer["cos"] for layer in collapsed["layers"]]
    assert cos[0] < 0.5 and cos[1] > 0.99 and cos[-1] > 0.9999  # every token the same after one layer, and on
    assert all(b >= a - 1e-6 for a, b in zip(cos, cos[1:]))
    torch.manual_seed(0)
    kept = measure(MaskedLM(cfg, "sas"), ids)  # shaped attention through the same depth keeps its tokens apart
    assert max(layer["cos"] for layer in kept["layers"]) < 0.6


# ------------------------------------------------------------------------------------------ intervals


def test_welch_interval_matches_a_hand_computation():
    a, b = [80.0, 81.0, 85.0], [79.0, 79.5, 80.0, 80.5]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = np.mean(a) - np.mean(b)
    got = stats.welch(a, b)
    assert (got.diff, got.low, got.high) == pytest.approx((diff, diff - half, diff + half))
    assert got.within_noise and not stats.welch([90, 91, 92], [80, 81, 82]).within_noise
    assert stats.welch([80.0], b) is None


def test_resampled_metrics_equal_the_metric_on_each_resample():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 50)
    preds = np.where(rng.random(50) < 0.8, labels, 1 - labels)
    scores, gold = rng.random(50) * 5, rng.random(50) * 5
    index = stats.bootstrap_index(50, 20, np.random.default_rng(2))
    for metric in ("accuracy", "f1", "matthews"):
        expected = [compute([metric], preds[i], labels[i])[metric] for i in index]
        assert stats.resampled_metric(metric, preds, labels, index) == pytest.approx(expected)
    for metric in ("pearson", "spearman"):
        expected = [compute([metric], scores[i], gold[i])[metric] for i in index]
        assert stats.resampled_metric(metric, scores, gold, index) == pytest.approx(expected)


def test_paired_bootstrap_matches_a_seeded_hand_loop(two_blocks_with_predictions):
    root, runs, truth = two_blocks_with_predictions
    from cramming_simple.report.load import load_runs, replicates

    loaded = load_runs([runs["preln"], runs["sas"]])
    groups, _ = replicates(loaded.runs, loaded.glue)
    table = paired_table(groups, {n: runs[n.split("-")[0]] for n in ("preln-24h", "sas-24h")}, replicates=200)
    row = table.data.iloc[0]
    assert row.run == "sas-24h - preln-24h"
    diffs_per_column = []
    for k, c in enumerate(COLUMNS):  # by hand: one seeded stream per column, metric per seed, mean over seeds
        y = truth[c.label]
        sets = {}
        for block, run in runs.items():
            sets[block] = []
            for seed in OFFSET:
                with np.load(run / "glue" / c.task / f"seed{seed}.predictions.npz") as z:
                    sets[block].append(z[f"{c.split}.prediction"])
        index = np.random.default_rng([0, k]).integers(0, len(y), size=(200, len(y)))
        diffs = []
        for i in index:
            mine = np.mean([compute([c.metric], p[i], y[i])[c.metric] for p in sets["sas"]])
            theirs = np.mean([compute([c.metric], p[i], y[i])[c.metric] for p in sets["preln"]])
            diffs.append(100 * (mine - theirs))
        point = 100 * (
            np.mean([compute([c.metric], p, y)[c.metric] for p in sets["sas"]])
            - np.mean([compute([c.metric], p, y)[c.metric] for p in sets["preln"]])
        )
        low, high = np.percentile(diffs, [2.5, 97.5])
        assert (row[c.label], row[f"{c.label} low"], row[f"{c.label} high"]) == pytest.approx((point, low, high))
        diffs_per_column.append(diffs)
    avg = np.mean(diffs_per_column, axis=0)
    assert (row["GLUE low"], row["GLUE high"]) == pytest.approx(tuple(np.percentile(avg, [2.5, 97.5])))


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


# ------------------------------------------------------------------------------------------ replicates, speed


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


# ------------------------------------------------------------------------------------------ across the budget


def test_snapshots_are_fine_tuned_with_glue_at_and_drawn_against_the_budget(smoke_cache, tmp_path):
    from helpers.glue_data import make_glue, write_tsv

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


def test_bootstrap_replicates_are_an_option_and_too_few_is_an_error(two_blocks_with_predictions, tmp_path):
    root, _, _ = two_blocks_with_predictions
    code, _, err = report(["--runs-dir", str(root), "--out", str(tmp_path / "out"), "--bootstrap", "300"])
    assert code == 0, err
    assert "300 paired bootstrap replicates" in (tmp_path / "out" / "index.md").read_text()
    code, _, err = report(["--runs-dir", str(root), "--out", str(tmp_path / "few"), "--bootstrap", "5"])
    assert code == 2 and "at least 100 replicates" in err
