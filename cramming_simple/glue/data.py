"""GLUE data from the hub, from a folder of the hub's parquet files, or from the original GLUE TSV distribution.

All three give the same `Examples`: texts in the hub's column order, labels as the hub's integers (STS-B: float
scores). `TaskData` tokenises a task once and keeps it on the training device; batches are cut from it with
padding to the longest sequence of each batch.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator, NoReturn

import numpy as np
import torch
from torch import Tensor

from ..config import ConfigError
from .config import Protocol
from .tasks import TaskSpec, TaskTable

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
        return (
            f"the hub ({self.hub})"
            if self.kind == "hub"
            else f"{self.root} ({'hub parquet' if self.kind == 'parquet' else 'GLUE TSV'} layout)"
        )


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
        missing = [
            f"{name}/{split}-*.parquet"
            for name in tasks
            for split in ("train", *table.tasks[name].splits)
            if not _parquet_files(source, name, split)
        ]
    elif any((root / spec.tsv.folder).is_dir() for spec in table.tasks.values()):
        source = Source("tsv", table.hub, root)
        missing = [
            f"{spec.tsv.folder}/{file}"
            for spec in (table.tasks[n] for n in tasks)
            for file in spec.tsv.files.values()
            if not (root / spec.tsv.folder / file).is_file()
        ]
    else:
        _fail(f"--data-dir {root} holds no GLUE data in either layout. {HOW_TO_GET_DATA}")
    if missing:
        _fail(f"--data-dir {root} ({source.kind} layout) lacks {', '.join(missing)}. {HOW_TO_GET_DATA}")
    return source


def load_task(source: Source, name: str, spec: TaskSpec) -> dict[str, Examples]:
    """The training split ('train') and every evaluation split of one task, checked as they are read.

    Every split must have the task's columns, at least one row, string texts and labels in the task's label
    set (a finite number for regression); otherwise a `ConfigError` names the file and the line or row.
    """
    splits = ["train", *spec.splits]
    if source.kind == "tsv":
        return {s: read_tsv(source.root / spec.tsv.folder / spec.tsv.files[s], spec) for s in splits}
    if source.kind == "parquet":
        return {s: read_parquet(_parquet_files(source, name, s), spec) for s in splits}
    dataset = _hub_dataset(source, name)
    return {
        s: examples_from_frame(dataset[s].to_pandas(), spec, f"{source.hub} ({name}, split {s}, from the hub)")
        for s in splits
    }


def read_parquet(files: list[Path], spec: TaskSpec) -> Examples:
    """One split from its parquet shards, in order; each shard is checked on its own (errors name the shard)."""
    import pandas as pd

    parts = []
    for f in files:
        try:
            frame = pd.read_parquet(f)
        except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            _fail(
                f"{f}: cannot read it as parquet ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            )
        parts.append(examples_from_frame(frame, spec, str(f), allow_empty=len(files) > 1))
    examples = Examples(
        [sum((p.texts[c] for p in parts), []) for c in range(len(spec.texts))],
        np.concatenate([p.labels for p in parts]),
    )
    if not len(examples):
        _fail(f"{', '.join(map(str, files))}: no rows")
    return examples


def examples_from_frame(frame, spec: TaskSpec, where: str, allow_empty: bool = False) -> Examples:
    """Checked `Examples` from a frame in the hub's schema (text columns and 'label'); rows are 0-based."""
    expected = [*spec.texts, "label"]
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        _fail(f"{where}: missing column(s) {missing}; expected {expected}, found {list(frame.columns)}")
    if not len(frame) and not allow_empty:
        _fail(f"{where}: no rows")
    for c in spec.texts:
        not_text = ~frame[c].map(lambda v: isinstance(v, str)).to_numpy(bool)
        if not_text.any():
            row = int(np.argmax(not_text))
            _fail(f"{where}, row {row}: column {c!r} holds {_plain(frame[c].iloc[row])!r}, expected a string")
    labels = frame["label"].to_numpy()
    values = pd_numeric(labels)
    bad = ~np.isfinite(values)
    expected_labels = expected_label(spec)
    if spec.score_range:
        bad |= (values < spec.score_range[0]) | (values > spec.score_range[1])
    if not spec.regression:
        bad |= (values != np.round(values)) | (values < 0) | (values >= spec.num_labels)
    if bad.any():
        row = int(np.argmax(bad))
        _fail(f"{where}, row {row}: label {_plain(labels[row])!r} is not {expected_labels}")
    texts = [frame[c].tolist() for c in spec.texts]
    return Examples(texts, values.astype(np.float32 if spec.regression else np.int64))


def _plain(value):
    """A numpy scalar as the Python value it holds (messages say 5, not np.int64(5))."""
    return value.item() if isinstance(value, np.generic) else value


def pd_numeric(values: np.ndarray) -> np.ndarray:
    """Labels as floats; anything that is not a number (a string, None) becomes NaN and fails the check."""
    import pandas as pd

    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)


def read_tsv(path: Path, spec: TaskSpec) -> Examples:
    """One GLUE TSV file, checked: UTF-8, the task's columns, at least one row, every label in the task's set.

    Quote characters are text (QUOTE_NONE). A row too short to hold the columns, a field over the csv module's
    limit or a label outside the task's set fails, naming the file and the line: a dev set never shrinks silently.
    """
    tsv = spec.tsv
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # MRPC's files start with a byte-order mark
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        _fail(f"{path}, line {line}: not UTF-8 (byte offset {err.start}: {err.reason})")
    expected = [*tsv.texts, tsv.label]
    rows = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    if tsv.header:
        names = next(rows, None)
        if names is None:
            _fail(f"{path}: empty file; expected a header line with the columns {expected}")
    else:
        names = tsv.names
    missing = [c for c in expected if c not in names]
    if missing:
        _fail(f"{path}, line 1: missing column(s) {missing}; expected {expected}, found {names}")
    columns = [names.index(c) for c in expected]
    texts: list[list[str]] = [[] for _ in tsv.texts]
    labels: list = []
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as err:  # e.g. a field over 131,072 characters: a damaged file, not a sentence
            _fail(f"{path}, line {rows.line_num}: {err}")
        if len(row) <= max(columns):
            _fail(
                f"{path}, line {rows.line_num}: {len(row)} column(s), too few for the columns {expected} (a damaged "
                "or cut line; the hub's copy: omit --data-dir)"
            )
        for out, c in zip(texts, columns):
            out.append(row[c])
        labels.append(_label(row[columns[-1]], spec, path, rows.line_num))
    if not labels:
        _fail(f"{path}: no data rows ({'only a header line' if tsv.header else 'no lines'})")
    return Examples(texts, np.asarray(labels, dtype=np.float32 if spec.regression else np.int64))


def _label(value: str, spec: TaskSpec, path: Path, line: int) -> float | int:
    label_map = spec.tsv.label_map
    if label_map:
        if value in label_map:
            return label_map[value]
        _fail(f"{path}, line {line}: label {value!r} is not one of {list(label_map)}")
    try:
        number = float(value) if spec.regression else int(value)
    except ValueError:
        number = None
    low, high = spec.score_range or (-math.inf, math.inf)
    if spec.regression and number is not None and math.isfinite(number) and low <= number <= high:
        return number
    if not spec.regression and number is not None and 0 <= number < spec.num_labels:
        return number
    _fail(f"{path}, line {line}: label {value!r} is not {expected_label(spec)}")


def expected_label(spec: TaskSpec) -> str:
    if not spec.regression:
        return f"one of the label ids 0..{spec.num_labels - 1}"
    if spec.score_range:
        return f"a score in [{spec.score_range[0]:g}, {spec.score_range[1]:g}]"
    return "a finite number"


def _parquet_files(source: Source, name: str, split: str) -> list[Path]:
    return sorted((source.root / name).glob(f"{split}-*.parquet"))


def _hub_dataset(source: Source, name: str):
    import datasets

    try:
        return datasets.load_dataset(source.hub, name)
    except Exception as err:  # noqa: BLE001 - offline, renamed, rate-limited: all mean the same to the user
        _fail(
            f"cannot load GLUE task '{name}' from the hub ({source.hub}): {type(err).__name__}: {err}. "
            f"{HOW_TO_GET_DATA}"
        )


def _fail(message: str) -> NoReturn:
    raise ConfigError(message)


# ----------------------------------------------------------------------------------------------- tokenised data


class Encoded:
    """A tokenised split on one device: every example's ids end to end, cut into batches padded to their longest."""

    def __init__(self, ids: list[list[int]], labels: np.ndarray, device: torch.device, pad_id: int = 0):
        self.lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))  # (N,) on the host: batch widths
        starts = np.cumsum(self.lengths) - self.lengths
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(self.lengths.sum()))
        self.flat = torch.from_numpy(flat).to(device)  # (total tokens,)
        self.starts = torch.from_numpy(starts).to(device)  # (N,)
        self.lens = torch.from_numpy(self.lengths).to(device)  # (N,)
        self.labels = torch.tensor(labels, device=device)  # (N,); a copy: arrays from parquet are read-only
        self.pad_id = pad_id  # the tokenizer's (cramming's tokenizers need not pad with 0)

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
            yield self.flat[at].masked_fill(~mask, self.pad_id), mask, self.labels[rows]  # ...then becomes pad


@dataclass
class TaskData:
    train: Encoded
    evals: dict[str, Encoded]
    examples: dict[str, int]  # examples used per split (train subsampled and evaluation capped by the protocol)
    train_available: int


def tokenize(
    tokenizer, examples: Examples, max_length: int, single_text: str = "clean", chunk: int = 8192
) -> list[list[int]]:
    """Token ids per example, the special tokens placed here from the tokenizer's own ids, whatever its templates:
    [CLS] a [SEP] b [SEP] for pairs; for one text [CLS] a [SEP] (clean) or [CLS] a [SEP] [SEP] (cramming: an empty
    second text). The texts are truncated longest-first by the tokenizer, to max_length with the specials."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    pair = len(examples.texts) == 2 or single_text == "cramming"
    ids: list[list[int]] = []
    for start in range(0, len(examples), chunk):
        columns = [col[start : start + chunk] for col in examples.texts]
        if pair and len(columns) == 1:
            columns.append([""] * len(columns[0]))  # cramming's empty second text
        out = tokenizer(
            *columns,
            add_special_tokens=False,
            truncation=True,
            max_length=max_length - (3 if pair else 2),  # room for the special tokens placed below
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        for i, row in enumerate(out["input_ids"]):
            if not pair:
                ids.append([cls, *row, sep])
                continue
            segment = out.sequence_ids(i)  # 0 / 1: which text a token came from
            first = [t for t, s in zip(row, segment) if s == 0]
            second = [t for t, s in zip(row, segment) if s == 1]
            ids.append([cls, *first, sep, *second, sep])
    return ids


def shown_inputs(tokenizer, examples: Examples, protocol: Protocol, n: int) -> list[str]:
    """The first n examples as the model gets them: their tokens, special tokens included (glue --show-inputs)."""
    first = examples.take(np.arange(min(n, len(examples))))
    ids = tokenize(tokenizer, first, protocol.max_length, protocol.single_text)
    return [" ".join(tokenizer.convert_ids_to_tokens(row)) for row in ids]


def check_counts(task: str, splits: dict[str, Examples], protocol: Protocol) -> None:
    """A task must keep at least one training and one evaluation example after the protocol's subsets."""
    for split, examples in splits.items():
        n = min(
            len(examples),
            (protocol.max_train_examples if split == "train" else protocol.max_eval_examples) or len(examples),
        )
        if n == 0:
            _fail(
                f"GLUE task {task}: no {split} examples to {'train on' if split == 'train' else 'evaluate'} after "
                "the protocol's subsets"
            )
        if split == "train" and protocol.drop_last and n < protocol.batch_size:
            _fail(
                f"GLUE task {task}: {n} training examples fill no batch of {protocol.batch_size}, and drop_last drops "
                "the partial one: nothing to train on (drop_last=false, or a smaller batch_size)"
            )


def prepare(
    splits: dict[str, Examples], tokenizer, protocol: Protocol, device: torch.device, task: str = "task"
) -> TaskData:
    """Apply the protocol's subsets, tokenise every split once and move it to `device`."""
    check_counts(task, splits, protocol)
    train = subset(splits["train"], protocol.max_train_examples)
    evals = {s: subset(e, protocol.max_eval_examples) for s, e in splits.items() if s != "train"}

    def encode(examples: Examples) -> Encoded:
        ids = tokenize(tokenizer, examples, protocol.max_length, protocol.single_text)
        return Encoded(ids, examples.labels, device, tokenizer.pad_token_id)

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
