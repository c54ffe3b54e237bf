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
import time
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..config import config_hash
from ..runtime import Progress, file_sha256, now_iso, read_json, remove_stale_temporaries, write_json, writer_tag
from .sources import DataConfig, DataError, document_batches, pretokenized_tokenizer_dir, token_batches
from .tokenizer import check_tokenizer, load_tokenizer, tokenizer_sha256, train_wordpiece

FORMAT = 1
CACHE_ENV = "CRAMMING_SIMPLE_CACHE"
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

    def identity(self, tokenizer: Any) -> dict:
        """What a run records of its data (summary.json, checkpoints) so that a resume, GLUE or a report can tell
        whether they read the same ids: the preparation's key, the shards' fingerprint, the tokenizer's hash."""
        shards = [[s["sha256"], s["rows"]] for s in self.manifest.get("shards", [])]
        return {
            "hash": self.path.name,
            "fingerprint": config_hash(shards, length=16),
            "tokenizer_sha256": self.manifest.get("tokenizer_sha256") or tokenizer_sha256(tokenizer),
            "cache": str(self.path.parent.resolve()),
        }


def data_key(cfg: DataConfig, vocab_size: int, seq_len: int) -> str:
    fields = {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_KEY}
    return config_hash({"format": FORMAT, "data": fields, "vocab_size": vocab_size, "seq_len": seq_len})


def prepared_path(cfg: DataConfig, vocab_size: int, seq_len: int) -> Path:
    return cache_root(cfg.cache_dir) / data_key(cfg, vocab_size, seq_len)


def cache_root(cache_dir: str = "") -> Path:
    """Where prepared data lives: `data.cache_dir` when set, else $CRAMMING_SIMPLE_CACHE, else the user's cache
    folder (e.g. ~/.cache/cramming-simple/data): never a folder that depends on where a command is started."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cramming-simple")) / "data"


def data_mismatch(recorded: dict | None, current: dict) -> str | None:
    """Why data a run recorded (its summary's or checkpoint's `data`) is not `current` (`Prepared.identity`), or
    None when they agree on everything both record (runs from before these keys only record the key)."""
    if not recorded:
        return None
    for field, what in (("hash", "preparation"), ("tokenizer_sha256", "tokenizer"), ("fingerprint", "shards")):
        if recorded.get(field) and current.get(field) and recorded[field] != current[field]:
            return f"its {what} differs ({field} {str(recorded[field])[:12]} recorded, {str(current[field])[:12]} now)"
    return None


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
    remove_stale_temporaries(root.parent, dead_only=True)  # <key>.partial<pid> of preparations that were killed
    if (root / MANIFEST).exists():
        return Prepared(root, read_json(root / MANIFEST), reused=True)
    start = time.perf_counter()
    work = root.with_name(root.name + f".partial{writer_tag()}")
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
    # A live bar on a terminal; in logs, a line every 30 s; nothing with -q (or show_progress=False)
    bar = Progress(cfg.max_documents, f"preparing {cfg.source} data", unit="docs", log_every=30, enabled=show_progress)
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
        bar.update(documents, sequences=writer.rows)
        if writer.full:
            break
    bar.close(sequences=writer.rows)
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
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
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
