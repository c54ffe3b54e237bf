"""cramming_simple/data/sources.py: the hub's layouts read from local folders, pretokenized uploads, an unreachable hub,
and the identity each source records."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import generic_text

from cramming_simple.config import ConfigError
from cramming_simple.data import (
    DataConfig,
    DataError,
    PackedData,
    load_tokenizer,
    prepare,
    train_wordpiece,
)
from cramming_simple.data.sources import document_batches


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


def test_every_source_records_its_identity_and_a_pretokenized_upload_prepares_the_same_twice(tmp_path):
    import numpy as np
    import pandas as pd
    from conftest import generic_text

    from cramming_simple.data import data_mismatch, load_tokenizer, train_wordpiece
    from cramming_simple.data.tokenizer import tokenizer_sha256

    repo = tmp_path / "user--pile-pretokenized"
    (repo / "data").mkdir(parents=True)
    tok = train_wordpiece(generic_text(300, seed=6), vocab_size=300)
    tok.save_pretrained(str(repo / "tokenizer"))
    rows = np.random.default_rng(0).integers(5, len(tok), size=(40, 32))
    pd.DataFrame({"input_ids": list(rows)}).to_parquet(repo / "data" / "train-00000-of-00001.parquet")
    (tmp_path / "corpus.txt").write_text("\n\n".join(generic_text(200, seed=1)))
    configs = {
        "hub-pretokenized": dict(source="hub-pretokenized", name=str(repo), column="input_ids"),
        "text": dict(source="text", files=[str(tmp_path / "corpus.txt")]),
        "builtin": dict(source="builtin", max_documents=2000),
    }
    for source, fields in configs.items():
        identities = []
        for cache in ("one", "two"):
            prepared = prepare(DataConfig(**fields, cache_dir=str(tmp_path / cache)), 512, 32, show_progress=False)
            tokenizer = load_tokenizer(prepared.tokenizer_dir)
            identity = prepared.identity(tokenizer)
            assert identity["tokenizer_sha256"] == tokenizer_sha256(tokenizer), source
            assert identity["hash"] == prepared.path.name and len(identity["fingerprint"]) == 16
            assert identity["cache"] == str(tmp_path / cache)
            identities.append(identity)
        if source == "hub-pretokenized":  # deterministic: a second cache holds the same ids
            assert data_mismatch(identities[0], identities[1]) is None
    changed = {**identities[0], "tokenizer_sha256": "0" * 64}
    assert "tokenizer differs" in data_mismatch(identities[0], changed)
    assert (
        data_mismatch(None, identities[0]) is None and data_mismatch({"hash": identities[0]["hash"]}, changed) is None
    )
