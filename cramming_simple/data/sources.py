"""Where pretraining text comes from: the hub (raw or pre-tokenised), local files, or the built-in corpus.

Everything streams through `datasets`, so memory stays flat whatever the corpus size. A hub `name` may also
be a local folder laid out like the hub's dataset repo (`data/train-*.parquet`, `tokenizer/`): the same
code path, used by the tests and by anyone with a local mirror.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator, List, Optional

from ..config import ConfigError, require

SOURCES = ("hub", "hub-pretokenized", "text", "builtin")
ORDERS = ("shuffle", "stored")  # data.order
OFFLINE_HINT = (
    "Offline alternatives: data.source=text data.files='[path/*.txt]' (also .jsonl, .parquet), or data.source=builtin."
)
BATCH = 1000  # documents per streamed batch


class DataError(ConfigError):
    """Data that cannot be found, read or trusted: fails before any training starts."""


@dataclass
class DataConfig:
    source: str = "builtin"  # hub | hub-pretokenized | text | builtin
    name: str = ""  # hub dataset (or a local folder in the hub's layout)
    config: Optional[str] = None  # hub config name
    split: str = "train"
    column: str = "text"  # the text column; the token-id column for hub-pretokenized
    files: List[str] = field(default_factory=list)  # text source: paths or globs of .txt / .jsonl / .parquet
    text_sample_by: str = "paragraph"  # .txt files: a document per line, paragraph or file
    tokenizer: Optional[str] = None  # hub-pretokenized: tokenizer folder (default: the dataset's tokenizer/)
    packed: bool = True  # hub-pretokenized: rows are already packed sequences of arch.seq_len tokens
    max_documents: Optional[int] = None  # read at most this many documents (rows)
    max_sequences: Optional[int] = None  # keep at most this many packed sequences
    tokenizer_documents: int = 200_000  # documents the WordPiece tokenizer is trained on
    shard_sequences: int = 65_536  # sequences per shard file
    cache_dir: str = ""  # prepared data lives in <cache_dir>/<hash of this config + vocab + seq_len>/; "": the user
    # cache ($CRAMMING_SIMPLE_CACHE, else e.g. ~/.cache/cramming-simple/data). A new run records the absolute path.
    verify: bool = True  # check shard checksums when a run opens the data
    holdout: int = 2048  # sequences held out for the eval loss (at most a tenth of the data); 0: none
    order: str = "shuffle"  # shuffle (a seeded permutation per epoch) | stored (the prepared rows in order, as
    # cramming streamed its pre-tokenised upload; by inference from its configs, that upload is sorted by a count of
    # "." tokens per row, most first: its "sentence-length curriculum")

    def validate(self) -> None:
        require(self.source in SOURCES, f"data.source must be one of {', '.join(SOURCES)}, got '{self.source}'")
        if self.source in ("hub", "hub-pretokenized"):
            require(
                bool(self.name),
                f"data.source={self.source} needs data.name (a hub dataset such as user/name). {OFFLINE_HINT}",
            )
        if self.source == "text":
            require(
                bool(self.files), "data.source=text needs data.files (paths or globs of .txt, .jsonl or .parquet files)"
            )
        require(
            self.text_sample_by in ("line", "paragraph", "document"),
            "data.text_sample_by must be line, paragraph or document",
        )
        require(self.order in ORDERS, f"data.order must be one of {', '.join(ORDERS)}, got '{self.order}'")
        require(self.holdout >= 0, f"data.holdout must be 0 or more sequences, got {self.holdout}")
        require(
            self.shard_sequences > 0 and self.tokenizer_documents > 0,
            "data.shard_sequences and data.tokenizer_documents must be positive",
        )

    def describe(self) -> dict:
        """What a report prints about the data of a run."""
        name = {"builtin": "python-stdlib-docstrings", "text": ",".join(self.files)}.get(self.source, self.name)
        return {"source": self.source, "name": name, "config": self.config, "split": self.split}


def is_local(name: str) -> bool:
    return bool(name) and Path(name).is_dir()


def check_hub(name: str) -> None:
    """Fail in seconds, naming the source and the offline alternatives, when the hub cannot serve `name`."""
    if is_local(name):
        return
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(name, timeout=15)
    except Exception as err:  # noqa: BLE001 - connection, DNS, 404 and auth errors all mean the same to the user
        raise DataError(
            f"cannot reach the Hugging Face hub dataset '{name}' ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). {OFFLINE_HINT}"
        ) from None


def _stream(cfg: DataConfig):
    import datasets

    if cfg.source == "text":
        return _stream_files(cfg)
    check_hub(cfg.name)
    try:
        return datasets.load_dataset(cfg.name, cfg.config, split=cfg.split, streaming=True)
    except Exception as err:  # noqa: BLE001
        raise DataError(
            f"cannot load '{cfg.name}' (config {cfg.config}, split {cfg.split}): {err}. {OFFLINE_HINT}"
        ) from None


def _stream_files(cfg: DataConfig):
    import datasets

    files = sorted(f for pattern in cfg.files for f in glob.glob(str(Path(pattern).expanduser()), recursive=True))
    if not files:
        raise DataError(f"data.source=text: no files match {cfg.files}")
    kinds = {Path(f).suffix for f in files}
    require(
        len(kinds) == 1 and kinds <= {".txt", ".jsonl", ".json", ".parquet"},
        f"data.files must all be .txt, all .jsonl or all .parquet; got {sorted(kinds)}",
    )
    kind = kinds.pop()
    if kind == ".txt":
        return datasets.load_dataset(
            "text", data_files=files, split="train", streaming=True, sample_by=cfg.text_sample_by
        )
    return datasets.load_dataset(
        "parquet" if kind == ".parquet" else "json", data_files=files, split="train", streaming=True
    )


def _column_batches(cfg: DataConfig) -> Iterator[list]:
    stream = _stream(cfg)
    for batch in stream.iter(batch_size=BATCH):
        if cfg.column not in batch:
            raise DataError(f"column '{cfg.column}' not in the data; its columns: {sorted(batch)} (set data.column)")
        yield batch[cfg.column]


def document_batches(cfg: DataConfig, limit: int | None = None) -> Iterator[list[str]]:
    """Raw text documents in batches (sources hub, text, builtin), at most `limit` (or data.max_documents)."""
    caps = [c for c in (limit, cfg.max_documents) if c is not None]
    cap = min(caps) if caps else None
    if cfg.source == "builtin":
        from .corpus import builtin_documents

        batches = _batched(builtin_documents(), BATCH)
    else:
        batches = ([str(t) for t in texts if t] for texts in _column_batches(cfg))
    yield from _capped(batches, cap)


def token_batches(cfg: DataConfig) -> Iterator[list[list[int]]]:
    """Rows of token ids in batches (source hub-pretokenized), at most data.max_documents rows."""
    yield from _capped(_column_batches(cfg), cfg.max_documents)


def _batched(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


def _capped(batches: Iterator[list], cap: int | None) -> Iterator[list]:
    seen = 0
    for batch in batches:
        if cap is not None and seen + len(batch) >= cap:
            yield batch[: cap - seen]
            return
        seen += len(batch)
        yield batch


def pretokenized_tokenizer_dir(cfg: DataConfig) -> Path:
    """The tokenizer of a pre-tokenised dataset: data.tokenizer, the local folder's tokenizer/, or the hub's."""
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    if is_local(cfg.name):
        return Path(cfg.name) / "tokenizer"
    from huggingface_hub import hf_hub_download

    check_hub(cfg.name)
    path = None
    for filename in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        try:
            path = hf_hub_download(cfg.name, filename, subfolder="tokenizer", repo_type="dataset")
        except Exception as err:  # noqa: BLE001
            if filename == "tokenizer.json":
                raise DataError(
                    f"cannot download the tokenizer of '{cfg.name}' (tokenizer/{filename}): {err}. {OFFLINE_HINT}"
                ) from None
    return Path(path).parent  # type: ignore[arg-type]
