"""cramming_simple/data/packing.py: packing, shards reused and checked, and where the cache lives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import generic_text

from cramming_simple.data import (
    DataConfig,
    DataError,
    PackedData,
    cache_root,
    load_tokenizer,
    prepare,
)
from cramming_simple.train.config import PretrainConfig


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


def test_the_data_cache_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRAMMING_SIMPLE_CACHE", str(tmp_path / "cache"))
    assert PretrainConfig.from_budget("smoke", "preln").data.cache_dir == str((tmp_path / "cache").resolve())
    relative = PretrainConfig.from_budget("smoke", "preln", ["data.cache_dir=mine"])
    assert relative.data.cache_dir == str(tmp_path / "mine")  # recorded absolute
    monkeypatch.delenv("CRAMMING_SIMPLE_CACHE")
    default = cache_root("")
    assert default.is_absolute() and "cramming-simple" in str(default) and tmp_path not in default.parents
