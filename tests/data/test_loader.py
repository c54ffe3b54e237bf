"""cramming_simple/data/loader.py: masking (the clean rule and cramming's), the permutation, resumable streams split
over ranks, the stored order of hub rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMOKE_VOCAB, generic_text
from helpers.data import SPECIALS
from helpers.tokenizers import UPLOAD_SPECIALS

from cramming_simple.data import (
    DataConfig,
    MicrobatchStream,
    MLMCollator,
    PackedData,
    Split,
    load_tokenizer,
    permute,
    prepare,
    train_wordpiece,
)
from cramming_simple.folders import save_model
from cramming_simple.model import IGNORE
from cramming_simple.train import loop
from cramming_simple.train.config import PretrainConfig
from cramming_simple.train.loop import pretrain


def collator(T=64, seed=0, vocab=500):
    return MLMCollator(T, 0.25, mask_id=4, special_ids=SPECIALS, vocab=vocab, seed=seed)


def test_collator_masks_exactly_round_pT_never_specials():
    col = collator()
    rng = np.random.default_rng(0)
    rows = rng.integers(5, 500, size=(64, 64))
    rows[:, ::7] = 3  # separators sprinkled in
    rows[0, 20:] = 0  # a padded row
    out = col(rows, np.arange(64))
    assert out["positions"].shape == out["labels"].shape == (64, 16)  # round(0.25 * 64)
    for b in range(64):
        pos = out["positions"][b]
        assert len(set(pos.tolist())) == 16
        valid = out["labels"][b] != IGNORE
        assert not np.isin(rows[b, pos[valid].numpy()], SPECIALS).any()  # never a special or pad token
        assert torch.equal(out["labels"][b][valid], torch.from_numpy(rows[b, pos[valid].numpy()]))
        untouched = np.setdiff1d(np.arange(64), pos.numpy())
        assert np.array_equal(out["input_ids"][b, untouched].numpy(), rows[b, untouched])
    # row 0 has 20 - 3 = 17 maskable tokens: all 16 slots valid; a row with only 6 gets 10 ignored slots
    assert (out["labels"][0] != IGNORE).sum() == 16
    short = rows[:1].copy()
    short[0, 6:] = 0
    assert (col(short, np.arange(1))["labels"] != IGNORE).sum() == 5  # 6 tokens minus the separator at 0


def test_collator_split_is_80_10_10_over_many_draws():
    col = collator(T=128, vocab=1000)
    rows = np.random.default_rng(1).integers(5, 1000, size=(2000, 128))
    out = col(rows, np.arange(2000))
    picked = out["input_ids"].gather(1, out["positions"])
    labels = out["labels"]
    n = labels.numel()
    masked = (picked == 4).float().sum() / n
    kept = (picked == labels).float().sum() / n
    random_ = 1 - masked - kept
    assert (
        masked == pytest.approx(0.8, abs=0.01)
        and kept == pytest.approx(0.1 + 0.1 / 995, abs=0.01)
        and random_ == pytest.approx(0.1, abs=0.01)
    )
    assert not np.isin(picked.numpy(), SPECIALS[:4]).any()  # random replacements are ordinary tokens


def test_cramming_masking_takes_specials_too_with_exact_counts_per_row():
    """train.masking=cramming: M = 32 of 128 positions, exactly 26 [MASK] / 3 random / 3 kept per row, [SEP] and
    [CLS] may be chosen, random ids from the whole vocabulary; pad is never chosen."""
    col = MLMCollator(128, 0.25, mask_id=4, special_ids=SPECIALS, vocab=1000, seed=0, masking="cramming")
    rng = np.random.default_rng(2)
    rows = rng.integers(5, 1000, size=(400, 128))
    rows[:, 0], rows[:, 64] = 2, 3  # [CLS] first, a [SEP] mid-row, as packed sequences have them
    rows[0, 100:] = 0  # a padded row
    out = col(rows, np.arange(400))
    picked = out["input_ids"].gather(1, out["positions"])
    labels = out["labels"]
    assert (labels != IGNORE).all()  # every row has at least 32 candidates
    assert ((picked == 4).sum(1) >= 26).all()  # 26 [MASK] per row (a random id may also land on [MASK]: rarely)
    assert ((picked == 4).sum(1) == 26).float().mean() > 0.9
    kept = (picked == labels).sum(1)
    assert ((kept >= 3) & (kept <= 6)).all() and (kept == 3).float().mean() > 0.9  # 3 kept (+ random hits)
    chosen_specials = np.isin(np.take_along_axis(rows, out["positions"].numpy(), 1), [2, 3]).sum()
    assert chosen_specials > 0.5 * 400 * 2 * 32 / 128  # specials are chosen as often as any token (~200 expected)
    assert not np.isin(rows[0, out["positions"][0].numpy()], [0]).any()  # never pad
    randoms = picked[(picked != 4) & (picked != labels)]
    assert np.isin(randoms.numpy(), SPECIALS).any()  # the whole vocabulary, specials included (clean: never)
    clean = MLMCollator(128, 0.25, mask_id=4, special_ids=SPECIALS, vocab=1000, seed=0)(rows, np.arange(400))
    assert not np.isin(np.take_along_axis(rows, clean["positions"].numpy(), 1), SPECIALS).any()


def test_permutation_is_a_bijection_and_depends_on_the_key():
    for n in (1, 2, 5, 64, 1000, 4099):
        assert sorted(permute(np.arange(n), n, key=3).tolist()) == list(range(n))
    assert not np.array_equal(permute(np.arange(1000), 1000, 1), permute(np.arange(1000), 1000, 2))


def test_stream_is_resumable_and_rank_split_equals_one_big_microbatch(smoke_cache):
    path = next(Path(smoke_cache).glob("*/manifest.json")).parent
    data = PackedData(path)
    col = MLMCollator(128, 0.25, 4, SPECIALS, SMOKE_VOCAB, seed=0)
    one = MicrobatchStream(data, col, microbatch=8, seed=0)
    again = MicrobatchStream(data, col, microbatch=8, seed=0)
    for b in (0, 5, 1000):  # batch 1000 is in a later epoch
        assert all(torch.equal(one(b)[k], again(b)[k]) for k in ("input_ids", "positions", "labels"))
    assert not torch.equal(one(0)["input_ids"], one(1)["input_ids"])
    ranks = [MicrobatchStream(data, col, microbatch=4, seed=0, rank=r, world=2) for r in (0, 1)]
    for b in (0, 3):
        split = [ranks[r](b) for r in (0, 1)]
        for key in ("input_ids", "positions", "labels"):
            assert torch.equal(torch.cat([s[key] for s in split]), one(b)[key])
    # one epoch visits every row exactly once
    epoch = MicrobatchStream(data, col, microbatch=len(data), seed=0)
    assert sorted(epoch.rows_of(epoch.samples(0)).tolist()) == list(range(len(data)))


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


@pytest.mark.parametrize("masking", ["clean", "cramming"])
def test_both_masking_rules_leave_the_tokenizers_pad_alone(upload, masking):
    from cramming_simple.data import MLMCollator

    tokenizer = load_tokenizer(upload / "tokenizer")
    pad = tokenizer.pad_token_id
    collate = MLMCollator.for_tokenizer(tokenizer, 16, 0.25, seed=0, masking=masking)
    rows = np.full((64, 16), pad)
    rows[:, :10] = np.random.default_rng(0).integers(len(UPLOAD_SPECIALS), len(tokenizer), (64, 10))  # 10 words, 6 pads
    batch = collate(rows, np.arange(64))
    chosen = np.take_along_axis(rows, batch["positions"].numpy(), axis=1)
    labels = batch["labels"].numpy()
    assert (chosen[labels != -100] != pad).all()  # never a pad position, whichever id pad has
    assert (labels != -100).sum() > 0
