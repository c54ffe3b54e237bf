"""Preparation: tokenizer, packing into fixed-length sequences, shards on disk with checksums.

Prepared data lives in `<cache_dir>/<key>/` where the key hashes the data config with the vocabulary size
and sequence length, so every block of a comparison reuses one preparation:
  manifest.json      written last: its presence means the preparation is complete
  tokenizer/         a `transformers` fast tokenizer
  shard_00000.npy    (rows, seq_len) token ids, uint16 when the vocabulary fits, memory-mapped by runs
Documents are joined with [SEP] and cut into seq_len-token rows; only the final remainder (< seq_len
tokens) is dropped. Memory stays flat: text streams in, one shard at a time is held, then written.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from ..config import config_hash
from ..runtime import file_sha256, now_iso, read_json, write_json
from .sources import DataConfig, DataError, document_batches, pretokenized_tokenizer_dir, token_batches
from .tokenizer import check_tokenizer, load_tokenizer, train_wordpiece

FORMAT = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer"
# Config fields that do not change the prepared bytes, so they stay out of the cache key.
NOT_IN_KEY = ("cache_dir", "verify", "holdout", "order")  # how a run reads prepared data, not what it is


@dataclass
class Prepared:
    path: Path
    manifest: dict
    reused: bool

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER


def data_key(cfg: DataConfig, vocab_size: int, seq_len: int) -> str:
    fields = {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_KEY}
    return config_hash({"format": FORMAT, "data": fields, "vocab_size": vocab_size, "seq_len": seq_len})


def prepared_path(cfg: DataConfig, vocab_size: int, seq_len: int) -> Path:
    return Path(cfg.cache_dir) / data_key(cfg, vocab_size, seq_len)


class ShardWriter:
    """Packs token streams into (rows, seq_len) arrays and writes them as .npy shards with checksums."""

    def __init__(self, folder: Path, seq_len: int, shard_rows: int, dtype: np.dtype, max_rows: int | None):
        self.folder, self.seq_len, self.shard_rows, self.dtype, self.max_rows = (
            folder,
            seq_len,
            shard_rows,
            dtype,
            max_rows,
        )
        self.carry = np.zeros(0, dtype=dtype)  # tokens not yet in a full row
        self.buffer: list[np.ndarray] = []  # full rows of the shard being filled
        self.buffered = 0
        self.shards: list[dict] = []
        self.rows = 0  # rows written or buffered
        self.tokens_in = 0

    @property
    def full(self) -> bool:
        return self.max_rows is not None and self.rows >= self.max_rows

    def add_stream(self, tokens: np.ndarray) -> None:
        """Append a flat token stream; complete rows go to the shard buffer."""
        self.tokens_in += len(tokens)
        stream = np.concatenate([self.carry, tokens.astype(self.dtype, copy=False)])
        n = len(stream) // self.seq_len
        if self.max_rows is not None:
            n = min(n, self.max_rows - self.rows)
        self.carry = stream[n * self.seq_len :]
        if n:
            self.buffer.append(stream[: n * self.seq_len].reshape(n, self.seq_len))
            self.buffered += n
            self.rows += n
        while self.buffered >= self.shard_rows:
            self._flush(self.shard_rows)

    def add_documents(self, docs: Iterable[list[int]], sep_id: int) -> None:
        """Documents joined by [SEP]: doc1 [SEP] doc2 [SEP] ..."""
        flat = list(chain.from_iterable(chain(doc, (sep_id,)) for doc in docs))
        self.add_stream(np.asarray(flat, dtype=np.int64))

    def add_rows(self, rows: list[list[int]]) -> None:
        """Rows that are already packed sequences of seq_len tokens (cramming's pre-tokenised uploads)."""
        bad = next((len(r) for r in rows if len(r) != self.seq_len), None)
        if bad is not None:
            raise DataError(
                f"a pre-tokenised row has {bad} tokens, not arch.seq_len={self.seq_len}; set data.packed=false to "
                "pack rows as documents"
            )
        self.add_stream(np.asarray(rows, dtype=np.int64).reshape(-1))

    def _flush(self, count: int) -> None:
        block = np.concatenate(self.buffer)
        shard, rest = block[:count], block[count:]
        self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)
        path = self.folder / f"shard_{len(self.shards):05d}.npy"
        np.save(path, shard)
        self.shards.append({"file": path.name, "rows": int(len(shard)), "sha256": file_sha256(path)})

    def close(self) -> int:
        """Write the last partial shard; return the number of dropped remainder tokens."""
        if self.buffered:
            self._flush(self.buffered)
        return int(len(self.carry))


def prepare(cfg: DataConfig, vocab_size: int, seq_len: int, show_progress: bool = True) -> Prepared:
    """Prepare (or reuse) the packed shards and tokenizer for `cfg` at this vocabulary and sequence length."""
    root = prepared_path(cfg, vocab_size, seq_len)
    if (root / MANIFEST).exists():
        return Prepared(root, read_json(root / MANIFEST), reused=True)
    start = time.perf_counter()
    work = root.with_name(root.name + f".partial{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        build(cfg, work, root.name, vocab_size, seq_len, show_progress, start)
    except BaseException:  # a full disk, an interrupt, bad data: no half-prepared folder is left behind
        shutil.rmtree(work, ignore_errors=True)
        raise
    if root.exists():  # a concurrent preparation finished first: keep theirs
        shutil.rmtree(work, ignore_errors=True)
    else:
        os.replace(work, root)
    return Prepared(root, read_json(root / MANIFEST), reused=False)


def build(
    cfg: DataConfig, work: Path, key: str, vocab_size: int, seq_len: int, show_progress: bool, start: float
) -> None:
    """Train (or load) the tokenizer, pack the shards and write the manifest (named `key`) into the folder `work`."""
    if cfg.source == "hub-pretokenized":
        tokenizer = load_tokenizer(pretokenized_tokenizer_dir(cfg))
    else:
        texts = chain.from_iterable(document_batches(cfg, limit=cfg.tokenizer_documents))
        tokenizer = train_wordpiece(texts, vocab_size)
    check_tokenizer(tokenizer, vocab_size, where=f"the tokenizer of data source '{cfg.source}'")
    tokenizer.save_pretrained(str(work / TOKENIZER))

    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    writer = ShardWriter(work, seq_len, cfg.shard_sequences, dtype, cfg.max_sequences)
    documents = 0
    # A live bar on a terminal; in logs, a line every 30 s.
    bar = tqdm(
        desc=f"preparing {cfg.source} data",
        unit=" docs",
        disable=not show_progress,
        mininterval=0.1 if sys.stderr.isatty() else 30,
    )
    if cfg.source == "hub-pretokenized":
        batches = token_batches(cfg)
    else:
        batches = (tokenizer(texts, add_special_tokens=False)["input_ids"] for texts in document_batches(cfg))
    for ids in batches:
        if cfg.source == "hub-pretokenized" and cfg.packed:
            writer.add_rows(ids)
        else:
            writer.add_documents(ids, tokenizer.sep_token_id)
        documents += len(ids)
        bar.update(len(ids))
        bar.set_postfix(sequences=writer.rows)
        if writer.full:
            break
    bar.close()
    dropped = writer.close()
    if writer.rows == 0:
        raise DataError(
            f"data source '{cfg.source}' gave no complete sequence of {seq_len} tokens ({documents} documents read)"
        )

    manifest = {
        "format": FORMAT,
        "key": key,
        "config": asdict(cfg),
        "description": cfg.describe(),
        "vocab_size": vocab_size,
        "seq_len": seq_len,
        "dtype": dtype.name,
        "tokenizer": TOKENIZER,
        "tokenizer_size": len(tokenizer),
        "special_ids": sorted(tokenizer.all_special_ids),
        "mask_id": tokenizer.mask_token_id,
        "sep_id": tokenizer.sep_token_id,
        "documents": documents,
        "tokens_in": writer.tokens_in,
        "sequences": writer.rows,
        "dropped_tokens": dropped,
        "shards": writer.shards,
        "created_at": now_iso(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(work / MANIFEST, manifest)
