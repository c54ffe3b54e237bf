"""Issue 13: the two recipes. Every switch with both values, the shipped profiles, and both profiles end to end."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import generic_text
from helpers.glue_data import make_glue, sentiment_words, write_parquet
from omegaconf import OmegaConf

from cramming_simple.cli import main
from cramming_simple.data import MicrobatchStream, MLMCollator, PackedData, Split, load_tokenizer, prepare
from cramming_simple.data.sources import DataConfig
from cramming_simple.data.tokenizer import train_wordpiece
from cramming_simple.folders import load_model, save_model
from cramming_simple.glue import finetune
from cramming_simple.glue.config import load_protocol, protocol_hash, protocol_values
from cramming_simple.model import BLOCKS, MaskedLM, arch_config
from cramming_simple.model.layers import Attention, KeyMask, ShapedAttention
from cramming_simple.optim import decays, make_optimizer
from cramming_simple.presets import CHECKOUT
from cramming_simple.profiles import SWITCHES, profile_of, switches
from cramming_simple.runtime import autocast_dtype, precision_name
from cramming_simple.train import loop
from cramming_simple.train.config import PretrainConfig
from cramming_simple.train.loop import pretrain


def as_dict(cfg) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in values.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


# ----------------------------------------------------------------------------------------------- the profiles


@pytest.mark.parametrize("clean, published", [("24h", "24h-published"), ("smoke", "smoke-published")])
def test_a_published_budget_differs_from_its_clean_twin_in_exactly_the_switches(clean, published):
    a, b = (flat(as_dict(PretrainConfig.from_budget(name, "sasp-nonorm"))) for name in (clean, published))
    differ = {k for k in a if a[k] != b[k]} - {"budget", "name"}
    assert differ == {s.key for s in switches("pretrain")}
    assert profile_of("pretrain", as_dict(PretrainConfig.from_budget(clean, "sas"))) == "clean"
    assert profile_of("pretrain", as_dict(PretrainConfig.from_budget(published, "sas"))) == "published"


@pytest.mark.parametrize("clean, published", [("paper", "published"), ("smoke", "smoke-published")])
def test_a_published_glue_protocol_differs_from_its_clean_twin_in_exactly_the_switches(clean, published):
    a, b = (dataclasses.asdict(load_protocol(name)[1]) for name in (clean, published))
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {s.key for s in switches("glue")}
    assert profile_of("glue", a) == "clean" and profile_of("glue", b) == "published"


def test_a_mixed_setting_names_the_switches_that_differ_from_the_clean_recipe():
    cfg = PretrainConfig.from_budget("24h", "sas", ["train.masking=cramming", "data.order=stored"])
    assert profile_of("pretrain", as_dict(cfg)) == "mixed (data.order=stored, train.masking=cramming)"
    assert profile_of("pretrain", {}) == "clean"  # a config from before the switches: the clean behaviour


def test_glue_protocol_hashes_of_older_versions_are_unchanged_so_stored_results_are_reused():
    # the hashes every result stored before the switches existed carries (they decide reuse)
    assert {p: protocol_hash(load_protocol(p)[1]) for p in ("paper", "smoke", "cramming")} == {
        "paper": "78bd6b623b91",
        "smoke": "06bb287156ba",
        "cramming": "eba49db62a55",
    }
    published = protocol_values(load_protocol("published")[1])
    assert published["head_width"] == 1024 and published["warmup_task"] == "cola"


def test_the_docs_table_lists_every_switch_with_both_values():
    text = (CHECKOUT / "docs" / "recipe.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}

    def shown(value) -> str:  # as YAML writes it
        if value is None or isinstance(value, bool):
            return {None: "null", True: "true", False: "false"}[value]
        return str(value)

    for s in SWITCHES:
        assert s.key in rows, f"docs/recipe.md has no row for {s.key}"
        cells = [c.strip() for c in rows[s.key].split("|")]
        assert f"`{shown(s.clean)}`" in cells[2] and f"`{shown(s.published)}`" in cells[3], rows[s.key]


# ----------------------------------------------------------------------------------------------- data.order


@pytest.fixture
def stored_hub(tmp_path):
    """A local hub-layout pre-tokenised dataset whose row i is token 5 + i everywhere (its identity)."""
    repo = tmp_path / "user--pretokenized"
    (repo / "data").mkdir(parents=True)
    tok = train_wordpiece(generic_text(300, seed=6), vocab_size=300)
    tok.save_pretrained(str(repo / "tokenizer"))
    rows = np.repeat(np.arange(5, 5 + 80)[:, None], 128, axis=1)
    pd.DataFrame({"input_ids": list(rows[:50])}).to_parquet(repo / "data" / "train-00000-of-00002.parquet")
    pd.DataFrame({"input_ids": list(rows[50:])}).to_parquet(repo / "data" / "train-00001-of-00002.parquet")
    return repo


def identity(rows: np.ndarray) -> list[int]:
    """The hub row each (masked) row came from: its most common token (three quarters are never touched)."""
    return [int(np.bincount(r).argmax()) - 5 for r in rows]


def test_stored_order_reads_the_hub_rows_in_order_skipping_held_out_rows_across_ranks(stored_hub, tmp_path):
    cfg = DataConfig(source="hub-pretokenized", name=str(stored_hub), column="input_ids", cache_dir=str(tmp_path))
    data = PackedData(prepare(cfg, 512, 128, show_progress=False).path)
    assert identity(data.rows(np.arange(80))) == list(range(80))  # preparation keeps the hub's order
    tok = load_tokenizer(prepare(cfg, 512, 128, show_progress=False).tokenizer_dir)
    collate = MLMCollator.for_tokenizer(tok, 128, 0.25, seed=0)
    split = Split.of(data, holdout=8)
    held = set(split.heldout_rows().tolist())
    trained = [r for r in range(80) if r not in held]
    one = MicrobatchStream(data, collate, 8, seed=0, split=split, order="stored")
    assert [r for b in range(9) for r in one.rows_of(one.samples(b))] == (trained * 2)[:72]  # wraps around
    ranks = [MicrobatchStream(data, collate, 4, seed=0, rank=k, world=2, split=split, order="stored") for k in (0, 1)]
    for b in range(4):  # two ranks with microbatch 4 read what one process with microbatch 8 reads
        both = np.concatenate([s.rows_of(s.samples(b)) for s in ranks])
        assert both.tolist() == one.rows_of(one.samples(b)).tolist()
    shuffled = MicrobatchStream(data, collate, 8, seed=0, split=split)
    rows = [r for b in range(9) for r in shuffled.rows_of(shuffled.samples(b))]
    assert sorted(rows[:72]) == sorted(trained) and rows[:72] != trained  # one permutation per epoch


def test_stored_order_continues_from_its_position_across_a_resume(stored_hub, tmp_path, monkeypatch):
    overrides = [
        "arch.preset=tiny",
        "data.source=hub-pretokenized",
        f"data.name={stored_hub}",
        "data.column=input_ids",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.order=stored",
        "data.holdout=8",
        "train.microbatch=4",
        "train.batch_max=8",
        "train.max_steps=5",
        "impl.device=cpu",
        "impl.eval_minutes=0",
        "hours=1",
    ]
    cfg = PretrainConfig.from_budget("smoke", "preln", overrides, name="stored")
    consumed: list[int] = []
    original = loop.Prefetcher.__next__

    def spy(self):
        batch = original(self)
        consumed.extend(identity(batch["input_ids"].numpy()))
        return batch

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(loop.Prefetcher, "__next__", spy)
    monkeypatch.setattr(loop, "save_model", killed)  # stop after the final checkpoint of the first part
    with pytest.raises(Killed):
        pretrain(cfg, tmp_path)
    monkeypatch.setattr(loop, "save_model", save_model)
    assert len(consumed) == 5 * 4
    summary = pretrain(PretrainConfig.from_run(tmp_path / "stored", ["train.max_steps=10"]), tmp_path, resume=True)
    assert summary["microbatch_steps"] == 10 and summary["profile"] == "mixed (data.order=stored)"
    data = PackedData(next((tmp_path / "cache").iterdir()))
    held = set(Split.of(data, 8).heldout_rows().tolist())
    assert consumed == [r for r in range(80) if r not in held][:40]


# ----------------------------------------------------------------------------------------------- decay rule


@pytest.mark.parametrize("block", list(BLOCKS))
def test_the_name_rule_decays_the_position_scale_and_nothing_else_differs(block):
    model = MaskedLM(arch_config("tiny", first_layer_norm=True), block)
    differ = [n for n, p in model.named_parameters() if decays(n, p, "ndim") != decays(n, p, "names")]
    assert differ == ["encoder.embedding.position_scale"]
    assert decays("encoder.embedding.position_scale", model.encoder.embedding.position_scale, "names")


@pytest.mark.parametrize("rule, shrinks", [("ndim", False), ("names", True)])
def test_an_optimizer_step_decays_the_position_scale_only_under_the_name_rule(rule, shrinks):
    model = MaskedLM(arch_config("tiny"), "sas")
    scale, gain = model.encoder.embedding.position_scale, model.encoder.layers[1].beta_ff
    before = scale.item(), gain.item()
    opt = make_optimizer(model, lr=0.1, weight_decay=0.5, decay_rule=rule)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert (scale.item() < before[0]) == shrinks and gain.item() == before[1]  # gains never decay


# ----------------------------------------------------------------------------------------------- GLUE switches


@pytest.mark.parametrize("fused", [True, False])
def test_attention_dropout_acts_in_training_mode_only(fused):
    cfg = arch_config("tiny", attention_dropout=0.5)
    torch.manual_seed(0)
    x, mask = torch.randn(2, 16, 128), KeyMask.from_attention_mask(torch.ones(2, 16), torch.float32)
    attn = Attention(cfg)
    attn.fused = fused
    plain = Attention(arch_config("tiny"))
    plain.load_state_dict(attn.state_dict())
    plain.fused = fused
    attn.eval()
    assert torch.allclose(attn(x, mask), plain(x, mask), atol=1e-6)
    attn.train()
    assert not torch.allclose(attn(x, mask), plain(x, mask), atol=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_shaped_attention_drops_only_its_attention_term(fused):
    cfg = arch_config("tiny", attention_dropout=0.5)
    torch.manual_seed(0)
    x = torch.randn(2, 16, 128)
    shaped = ShapedAttention(cfg, "identity")
    with torch.no_grad():
        shaped.qk.weight.normal_()  # non-uniform attention
    shaped.fused = fused
    plain = ShapedAttention(arch_config("tiny"), "identity")
    plain.load_state_dict(shaped.state_dict())
    plain.fused = fused
    shaped.eval()
    reference = shaped(x, None)
    assert torch.allclose(reference, plain(x, None), atol=1e-6)  # scoring: no dropout
    shaped.train()
    assert not torch.allclose(shaped(x, None), reference, atol=1e-3)
    with torch.no_grad():
        shaped.beta.zero_()  # no attention term left: alpha I - gamma C is not attention and is never dropped
    kept = shaped(x, None)
    shaped.eval()
    assert torch.allclose(kept, shaped(x, None), atol=1e-6)


def test_the_head_width_is_the_protocols(tmp_path):
    save_model(MaskedLM(arch_config("tiny"), "preln"), tmp_path / "model")
    wide = load_model(tmp_path / "model", num_labels=3, head_width=1024)
    assert (wide.classifier.dense.in_features, wide.classifier.dense.out_features, wide.classifier.out.in_features) == (
        128,
        1024,
        1024,
    )
    plain = load_model(tmp_path / "model", num_labels=3)
    assert plain.classifier.dense.out_features == 128 and plain.classifier.out.in_features == 128
    assert load_protocol("published")[1].head_width == 1024 and load_protocol("paper")[1].head_width is None


def test_warmup_from_each_task_or_from_the_first_task():
    each = load_protocol("paper")[1]
    first = load_protocol("published", ["drop_last=false"])[1]  # the warmup rule alone (drop_last: test_upload_...)
    cola, rte, mnli = 8551, 2490, 392702  # GLUE training set sizes
    assert finetune.schedule_steps(rte, each) == (5 * 78, math.ceil(0.1 * 5 * 78))
    assert finetune.schedule_steps(mnli, each)[1] == math.ceil(0.1 * 5 * 12272)
    cola_steps = 5 * math.ceil(cola / 32)
    for task in (cola, rte, mnli):  # every task warms up for CoLA's int(0.1 x steps)
        assert finetune.schedule_steps(task, first, first_task_examples=cola) == (
            5 * math.ceil(task / 32),
            int(0.1 * cola_steps),
        )
    with pytest.raises(ValueError, match="warmup_task"):
        finetune.schedule_steps(rte, first)


# ----------------------------------------------------------------------------------------------- end to end


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_both_profiles_run_end_to_end_and_the_report_names_them(smoke_cache, tmp_path, monkeypatch):
    """smoke and smoke-published: pretraining, GLUE (fp16 with a GradScaler on CPU for the published one, with
    CoLA's warmup for every task), and a report that names both profiles and warns that they differ."""
    runs = tmp_path / "runs"
    for budget in ("smoke", "smoke-published"):
        code, out = cli(
            "pretrain",
            "--block",
            "sasp-nonorm",
            "--budget",
            budget,
            "--runs-dir",
            str(runs),
            f"data.cache_dir={smoke_cache}",
            "impl.device=cpu",
            "hours=0.002",
            "train.max_steps=6",
            "impl.eval_minutes=0",
            "data.holdout=64",
        )
        assert code == 0, out
        profile = "clean" if budget == "smoke" else "published"
        assert f"profile {profile}" in out
        summary = json.loads((runs / f"sasp-nonorm-{budget}" / "summary.json").read_text())
        auto = precision_name(autocast_dtype(torch.device("cpu"), "auto"))  # bf16 where the CPU has it
        assert summary["profile"] == profile and summary["precision"] == ("fp16" if profile == "published" else auto)
        assert math.isfinite(summary["eval_loss"])
    published_run = runs / "sasp-nonorm-smoke-published"
    clean_params = json.loads((runs / "sasp-nonorm-smoke" / "summary.json").read_text())["params"]
    assert json.loads((published_run / "summary.json").read_text())["params"] == clean_params + 2 * 128

    words = sentiment_words(load_tokenizer(published_run / "model"))
    glue_dir = write_parquet(make_glue({"cola": 200, "default": 48}, n_eval=32, words=words), tmp_path / "glue")
    scalers = []
    real = torch.amp.GradScaler

    def spy(*args, **kwargs):
        scalers.append(real(*args, **kwargs))
        return scalers[-1]

    monkeypatch.setattr(finetune.torch.amp, "GradScaler", spy)
    for budget, protocol in (("smoke", "smoke"), ("smoke-published", "smoke-published")):
        run = runs / f"sasp-nonorm-{budget}"
        code, out = cli("glue", str(run), "--data-dir", str(glue_dir), "--protocol", protocol, "--tasks", "rte")
        assert code == 0, out
        result = json.loads((run / "glue" / "rte" / "seed1.json").read_text())
        # rte: 48 examples, 3 steps per epoch x 5 = 15; cola: 200 examples, 13 x 5 = 65 steps
        assert result["steps"] == 15
        assert result["warmup_steps"] == (math.ceil(0.1 * 15) if protocol == "smoke" else int(0.1 * 65))
    assert [s.is_enabled() for s in scalers] == [False, True]
    assert scalers[1].get_scale() > 0 and scalers[1]._scale is not None  # used: scaling started

    code, out = cli("report", "--runs-dir", str(runs), "--out", str(tmp_path / "report"), "--reference", "none")
    assert code == 0, out
    index = (tmp_path / "report" / "index.md").read_text()
    assert re.search(r"sasp-nonorm-smoke\*\* \([^)]*\): profile clean", index)
    assert re.search(r"sasp-nonorm-smoke-published\*\* \([^)]*\): profile published", index)
    assert "profile clean)" in index and "profile published)" in index  # the GLUE protocols' profiles
    assert "runs differ in pretraining profile" in index and "runs differ in GLUE profile" in index


def test_a_run_from_before_the_switches_is_a_replicate_of_a_clean_run_of_today():
    from cramming_simple.report.load import experiment_key

    today = as_dict(PretrainConfig.from_budget("24h", "sas"))
    older = json.loads(json.dumps(today))
    for s in switches("pretrain"):
        section, key = s.key.split(".")
        del older[section][key]
    del older["arch"]["attention_dropout"]
    facts = {"block": "sas", "device": "H100", "world_size": 1, "precision": "bf16"}
    assert experiment_key(older, facts) == experiment_key(today, facts)
    published = as_dict(PretrainConfig.from_budget("24h", "sas", ["data.order=stored"]))
    assert experiment_key(published, facts) != experiment_key(today, facts)
