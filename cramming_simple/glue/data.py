"""GLUE data from the hub, from a folder of the hub's parquet files, or from the original GLUE TSV distribution.

All three give the same `Examples`: texts in the hub's column order, labels as the hub's integers (STS-B: float
scores). `TaskData` tokenises a task once and keeps it on the training device; batches are cut from it with
padding to the longest sequence of each batch.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator, NoReturn

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigError
from .config import Protocol, TaskSpec, TaskTable

HOW_TO_GET_DATA = (
    "Without hub access, pass --data-dir DIR holding either the hub's parquet files "
    "(DIR/cola/train-00000-of-00001.parquet, DIR/mnli/validation_matched-*.parquet, ...) "
    "or the original GLUE TSV distribution (DIR/CoLA/train.tsv, ..., DIR/MNLI/dev_matched.tsv)."
)
SUBSET_SEED = 0  # smoke runs use the same subsets for every seed


@dataclass
class Examples:
    texts: list[list[str]]  # one list per text column: [sentences] or [first sentences, second sentences]
    labels: np.ndarray  # (N,) int64 label ids, or float32 scores for regression

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Examples:
        return Examples([[col[i] for i in index] for col in self.texts], self.labels[index])


# ----------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """Where the GLUE data comes from: kind 'hub', or 'parquet' / 'tsv' files under root."""

    kind: str
    hub: str
    root: Path | None = None

    def describe(self) -> str:
        return f"the hub ({self.hub})" if self.kind == "hub" else f"{self.root} ({'hub parquet' if self.kind == 'parquet' else 'GLUE TSV'} layout)"


def open_source(data_dir: str | Path | None, table: TaskTable, tasks: list[str]) -> Source:
    """The data source for `tasks`, checked up front: missing data fails here, before any training."""
    if data_dir is None:
        source = Source("hub", table.hub)
        for name in tasks:
            _hub_dataset(source, name)  # downloads and caches; later loads read the cache
        return source
    root = Path(data_dir)
    if not root.is_dir():
        _fail(f"--data-dir {root} is not a folder. {HOW_TO_GET_DATA}")
    if any(any((root / name).glob("*.parquet")) for name in table.tasks):
        source = Source("parquet", table.hub, root)
        missing = [f"{name}/{split}-*.parquet" for name in tasks for split in ("train", *table.tasks[name].splits) if not _parquet_files(source, name, split)]
    elif any((root / spec.tsv.folder).is_dir() for spec in table.tasks.values()):
        source = Source("tsv", table.hub, root)
        missing = [f"{spec.tsv.folder}/{file}" for spec in (table.tasks[n] for n in tasks) for file in spec.tsv.files.values() if not (root / spec.tsv.folder / file).is_file()]
    else:
        _fail(f"--data-dir {root} holds no GLUE data in either layout. {HOW_TO_GET_DATA}")
    if missing:
        _fail(f"--data-dir {root} ({source.kind} layout) lacks {', '.join(missing)}. {HOW_TO_GET_DATA}")
    return source


def load_task(source: Source, name: str, spec: TaskSpec) -> dict[str, Examples]:
    """The training split ('train') and every evaluation split of one task."""
    splits = ["train", *spec.splits]
    if source.kind == "tsv":
        return {s: read_tsv(source.root / spec.tsv.folder / spec.tsv.files[s], spec) for s in splits}
    if source.kind == "parquet":
        import pandas as pd

        frames = {s: pd.concat([pd.read_parquet(f) for f in _parquet_files(source, name, s)], ignore_index=True) for s in splits}
    else:
        dataset = _hub_dataset(source, name)
        frames = {s: dataset[s].to_pandas() for s in splits}
    dtype = np.float32 if spec.regression else np.int64
    return {s: Examples([f[c].fillna("").astype(str).tolist() for c in spec.texts], f["label"].to_numpy(dtype)) for s, f in frames.items()}


def read_tsv(path: Path, spec: TaskSpec) -> Examples:
    """One GLUE TSV file. Quote characters are text (QUOTE_NONE); rows too short to hold the columns are skipped."""
    tsv = spec.tsv
    with open(path, encoding="utf-8-sig", newline="") as f:  # MRPC's files start with a byte-order mark
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = next(rows) if tsv.header else tsv.names
        try:
            columns = [names.index(c) for c in (*tsv.texts, tsv.label)]
        except ValueError:
            _fail(f"{path}: expected columns {[*tsv.texts, tsv.label]}, found {names}")
        texts: list[list[str]] = [[] for _ in tsv.texts]
        labels, skipped = [], 0
        for row in rows:
            if len(row) <= max(columns):
                skipped += 1  # a few malformed QQP lines in the original distribution
                continue
            for text, c in zip(texts, columns):
                text.append(row[c])
            labels.append(_label(row[columns[-1]], spec, path))
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} malformed row(s)", stacklevel=2)
    return Examples(texts, np.asarray(labels, dtype=np.float32 if spec.regression else np.int64))


def _label(value: str, spec: TaskSpec, path: Path) -> float | int:
    try:
        if spec.tsv.label_map:
            return spec.tsv.label_map[value]
        return float(value) if spec.regression else int(value)
    except (KeyError, ValueError):
        _fail(f"{path}: unexpected label {value!r}" + (f" (expected one of {list(spec.tsv.label_map)})" if spec.tsv.label_map else ""))


def _parquet_files(source: Source, name: str, split: str) -> list[Path]:
    return sorted((source.root / name).glob(f"{split}-*.parquet"))


def _hub_dataset(source: Source, name: str):
    import datasets

    try:
        return datasets.load_dataset(source.hub, name)
    except Exception as err:  # noqa: BLE001 - offline, renamed, rate-limited: all mean the same to the user
        _fail(f"cannot load GLUE task '{name}' from the hub ({source.hub}): {type(err).__name__}: {err}. {HOW_TO_GET_DATA}")


def _fail(message: str) -> NoReturn:
    raise ConfigError(message)


# ----------------------------------------------------------------------------------------------- tokenised data


class Encoded:
    """A tokenised split on one device: every example's ids end to end, cut into batches padded to their longest."""

    def __init__(self, ids: list[list[int]], labels: np.ndarray, device: torch.device):
        self.lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))  # (N,) on the host: batch widths
        starts = np.cumsum(self.lengths) - self.lengths
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(self.lengths.sum()))
        self.flat = torch.from_numpy(flat).to(device)  # (total tokens,)
        self.starts = torch.from_numpy(starts).to(device)  # (N,)
        self.lens = torch.from_numpy(self.lengths).to(device)  # (N,)
        self.labels = torch.tensor(labels, device=device)  # (N,); a copy: arrays from parquet are read-only

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self, order: np.ndarray, size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(input_ids (B, L), attention_mask (B, L) bool, labels (B,)) for consecutive `size`-slices of `order`.

        L is the longest sequence in the batch. The order goes to the device once; no host sync per batch.
        """
        rows_all = torch.from_numpy(order).to(self.flat.device)
        for start in range(0, len(order), size):
            width = int(self.lengths[order[start : start + size]].max())
            rows = rows_all[start : start + size]  # (B,)
            cols = torch.arange(width, device=self.flat.device)  # (L,)
            mask = cols < self.lens[rows, None]  # (B, L)
            at = (self.starts[rows, None] + cols).clamp_max(len(self.flat) - 1)  # (B, L); padding reads a neighbour...
            yield self.flat[at].masked_fill(~mask, 0), mask, self.labels[rows]  # ...then becomes pad id 0


@dataclass
class TaskData:
    train: Encoded
    evals: dict[str, Encoded]
    examples: dict[str, int]  # examples used per split (train subsampled and evaluation capped by the protocol)
    train_available: int


def tokenize(tokenizer, examples: Examples, max_length: int, chunk: int = 8192) -> list[list[int]]:
    """Token ids per example; pairs as pairs ([CLS] a [SEP] b [SEP]), truncated longest-first to max_length."""
    ids: list[list[int]] = []
    for start in range(0, len(examples), chunk):
        columns = [col[start : start + chunk] for col in examples.texts]
        out = tokenizer(*columns, truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False)
        ids.extend(out["input_ids"])
    return ids


def prepare(splits: dict[str, Examples], tokenizer, protocol: Protocol, device: torch.device) -> TaskData:
    """Apply the protocol's subsets, tokenise every split once and move it to `device`."""
    train = subset(splits["train"], protocol.max_train_examples)
    evals = {s: subset(e, protocol.max_eval_examples) for s, e in splits.items() if s != "train"}

    def encode(examples: Examples) -> Encoded:
        return Encoded(tokenize(tokenizer, examples, protocol.max_length), examples.labels, device)

    return TaskData(
        train=encode(train),
        evals={s: encode(e) for s, e in evals.items()},
        examples={"train": len(train), **{s: len(e) for s, e in evals.items()}},
        train_available=len(splits["train"]),
    )


def subset(examples: Examples, n: int | None) -> Examples:
    """A fixed random subset of n examples in their original order (the same for every seed); all if n is None."""
    if n is None or len(examples) <= n:
        return examples
    return examples.take(np.sort(np.random.default_rng(SUBSET_SEED).choice(len(examples), n, replace=False)))
