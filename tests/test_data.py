"""Pretraining data: sources (incl. hub layouts on local files), corpus, tokenizer, packing, shards, masking."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SMOKE_VOCAB, generic_text

from cramming_simple.config import ConfigError
from cramming_simple.data import (
    DataConfig,
    DataError,
    MicrobatchStream,
    MLMCollator,
    PackedData,
    load_tokenizer,
    permute,
    prepare,
    train_wordpiece,
)
from cramming_simple.data.corpus import builtin_documents, docstrings, stdlib_files
from cramming_simple.data.sources import document_batches
from cramming_simple.model import IGNORE

SPECIALS = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask in our trained tokenizers


# ------------------------------------------------------------------------------------------ corpus, tokenizer


def test_builtin_corpus_is_deterministic_and_substantial():
    first = list(builtin_documents())
    fresh = [doc for path in stdlib_files() for doc in docstrings(path)]  # a second, uncached parse
    assert first == fresh
    assert len(first) > 2000 and sum(map(len, first)) > 500_000  # the stdlib has megabytes of docstrings
    assert all(len(d) >= 40 for d in first)
    assert any("Return" in d for d in first)  # prose, not code


def test_tokenizer_round_trip_and_special_ids(smoke_cache):
    tok = load_tokenizer(next(Path(smoke_cache).glob("*/tokenizer")))
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == SPECIALS
    assert len(tok) == SMOKE_VOCAB
    text = "Return a new list containing all items from the iterable in ascending order."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    decoded = tok.decode(ids)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")  # lowercased, nothing lost
    assert tok(decoded, add_special_tokens=False)["input_ids"] == ids
    assert (
        tok("Émile", add_special_tokens=False)["input_ids"] == tok("emile", add_special_tokens=False)["input_ids"]
    )  # accents stripped
    pair = tok("first one", "second")["input_ids"]
    assert pair[0] == tok.cls_token_id and pair.count(tok.sep_token_id) == 2 and pair[-1] == tok.sep_token_id


# ------------------------------------------------------------------------------------------ packing, cache


def write_text_corpus(folder: Path, docs: list[str]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(pd.Series({"text": d}).to_json() + "\n" for d in docs))
    return str(folder / "*.jsonl")


def test_packing_loses_only_the_final_remainder(tmp_path):
    docs = generic_text(300, seed=3)
    cfg = DataConfig(
        source="text",
        files=[write_text_corpus(tmp_path / "txt", docs)],
        cache_dir=str(tmp_path / "cache"),
        shard_sequences=16,
    )
    prepared = prepare(cfg, vocab_size=300, seq_len=32, show_progress=False)
    m = prepared.manifest
    tok = load_tokenizer(prepared.tokenizer_dir)
    stream = []
    for doc in docs:
        stream += tok(doc, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    assert m["tokens_in"] == len(stream)
    assert m["sequences"] == len(stream) // 32 and m["dropped_tokens"] == len(stream) % 32 < 32
    assert len(m["shards"]) == -(-m["sequences"] // 16) and all(s["rows"] == 16 for s in m["shards"][:-1])
    data = PackedData(prepared.path)
    rows = data.rows(np.arange(len(data)))
    assert rows.dtype == np.uint16
    assert rows.reshape(-1).tolist() == stream[: m["sequences"] * 32]  # in order, nothing else dropped


def test_a_second_preparation_reuses_the_shards(tmp_path, monkeypatch):
    docs = generic_text(200, seed=4)
    cfg = DataConfig(
        source="text", files=[write_text_corpus(tmp_path / "txt", docs)], cache_dir=str(tmp_path / "cache")
    )
    first = prepare(cfg, 300, 32, show_progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}

    def no_work(*args, **kwargs):
        raise AssertionError("re-tokenised")

    import cramming_simple.data.packing as prep

    monkeypatch.setattr(prep, "train_wordpiece", no_work)
    monkeypatch.setattr(prep, "document_batches", no_work)
    second = prepare(cfg, 300, 32, show_progress=False)
    assert second.reused and second.path == first.path
    assert {p.name: p.stat().st_mtime_ns for p in second.path.iterdir()} == stamps
    # a different vocabulary or sequence length is a different preparation
    monkeypatch.undo()
    assert prepare(cfg, 300, 16, show_progress=False).path != first.path


# ------------------------------------------------------------------------------------------ hub layouts


def test_hub_source_reads_a_folder_in_the_hubs_parquet_layout(tmp_path):
    docs = generic_text(150, seed=5)
    repo = tmp_path / "user--corpus"
    (repo / "data").mkdir(parents=True)
    pd.DataFrame({"text": docs[:100], "id": range(100)}).to_parquet(repo / "data" / "train-00000-of-00002.parquet")
    pd.DataFrame({"text": docs[100:], "id": range(50)}).to_parquet(repo / "data" / "train-00001-of-00002.parquet")
    cfg = DataConfig(source="hub", name=str(repo), cache_dir=str(tmp_path / "cache"))
    assert [d for batch in document_batches(cfg) for d in batch] == docs  # all documents, in order
    assert [d for batch in document_batches(cfg, limit=120) for d in batch] == docs[:120]
    prepared = prepare(cfg, 300, 32, show_progress=False)
    tok = load_tokenizer(prepared.tokenizer_dir)
    expected = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    assert prepared.manifest["documents"] == 150 and prepared.manifest["tokens_in"] == expected
    assert len(PackedData(prepared.path)) == expected // 32


def test_hub_pretokenized_source_reads_packed_rows_and_its_tokenizer(tmp_path):
    repo = tmp_path / "user--pile-pretokenized"
    (repo / "data").mkdir(parents=True)
    tok = train_wordpiece(generic_text(300, seed=6), vocab_size=300)
    tok.save_pretrained(str(repo / "tokenizer"))
    rng = np.random.default_rng(0)
    rows = rng.integers(5, len(tok), size=(40, 32))
    pd.DataFrame({"input_ids": list(rows)}).to_parquet(repo / "data" / "train-00000-of-00001.parquet")
    cfg = DataConfig(
        source="hub-pretokenized",
        name=str(repo),
        column="input_ids",
        cache_dir=str(tmp_path / "cache"),
        max_sequences=30,
    )
    prepared = prepare(cfg, vocab_size=512, seq_len=32, show_progress=False)
    data = PackedData(prepared.path)
    assert len(data) == 30
    assert np.array_equal(data.rows(np.arange(30)), rows[:30])
    assert load_tokenizer(prepared.tokenizer_dir).get_vocab() == tok.get_vocab()
    with pytest.raises(DataError, match="seq_len"):  # rows that are not packed at this length are refused
        prepare(cfg, vocab_size=512, seq_len=16, show_progress=False)
    with pytest.raises(ConfigError, match="vocabulary"):  # a tokenizer larger than the model's vocabulary
        prepare(
            DataConfig(source="hub-pretokenized", name=str(repo), column="input_ids", cache_dir=str(tmp_path / "c2")),
            100,
            32,
            show_progress=False,
        )


def test_unreachable_hub_fails_fast_naming_the_offline_alternatives(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0"}
    start = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cramming_simple",
            "data",
            "--budget",
            "smoke",
            "data.source=hub",
            "data.name=someone/not-here",
            f"data.cache_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert time.monotonic() - start < 60
    assert "someone/not-here" in out.stderr and "data.source=builtin" in out.stderr and "data.source=text" in out.stderr


def test_missing_local_files_fail_before_anything_else(tmp_path):
    cfg = DataConfig(source="text", files=[str(tmp_path / "nowhere" / "*.txt")], cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="no files match"):
        prepare(cfg, 300, 32, show_progress=False)


def test_corrupted_shard_is_detected(tmp_path):
    cfg = DataConfig(
        source="text",
        files=[write_text_corpus(tmp_path / "txt", generic_text(200, seed=7))],
        cache_dir=str(tmp_path / "cache"),
        shard_sequences=8,
    )
    prepared = prepare(cfg, 300, 32, show_progress=False)
    PackedData(prepared.path)  # intact: opens
    shard = prepared.path / prepared.manifest["shards"][1]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF  # one flipped token byte, same size, still a valid .npy
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupted"):
        PackedData(prepared.path)


# ------------------------------------------------------------------------------------------ masking, order


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
