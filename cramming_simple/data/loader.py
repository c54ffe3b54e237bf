"""From prepared shards to device-ready MLM microbatches: memory-mapped reads, a stateless shuffle, masking.

Everything random here is a pure function of (seed, position in the sample stream): the shuffle is a
pseudo-random bijection evaluated pointwise, and the mask noise is a hash of (seed, sample, column). So
  - resuming needs only the number of microbatches consumed, and
  - W ranks with microbatch B read and mask exactly the samples that one process with microbatch W*B
    would, which is what makes a distributed step equal a single-process step.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..model import IGNORE
from ..runtime import file_sha256, read_json
from .packing import MANIFEST
from .sources import ORDERS, DataError

# ----------------------------------------------------------------------------------------------- hashing

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fast, well-mixed hash of uint64 values (wrapping arithmetic)."""
    x = x.astype(np.uint64) + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniform(key: int, index: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), one per uint64 index, a pure function of (key, index)."""
    h = mix64(mix64(np.array([key], dtype=np.uint64)) ^ index.astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def permute(index: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A pseudo-random bijection of [0, n), evaluated pointwise with O(1) memory.

    A balanced Feistel network on the smallest even-bit power of two >= n; values that land outside
    [0, n) are walked through the network again (cycle walking) until they land inside.
    """
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
    round_keys = mix64(np.arange(rounds, dtype=np.uint64) + np.uint64(key % 2**63) * np.uint64(rounds))

    def network(x: np.ndarray) -> np.ndarray:
        left, right = x >> shift, x & mask
        for k in round_keys:
            left, right = right, left ^ (mix64(right ^ k) & mask)
        return (left << shift) | right

    out = network(index.astype(np.uint64))
    outside = out >= n
    while outside.any():
        out[outside] = network(out[outside])
        outside = out >= n
    return out.astype(np.int64)


# ----------------------------------------------------------------------------------------------- shards


class PackedData:
    """The prepared sequences: all shards memory-mapped, addressed by one global row index."""

    def __init__(self, root: str | Path, verify: bool = True):
        self.root = Path(root)
        if not (self.root / MANIFEST).exists():
            raise DataError(f"no prepared data at {self.root} (run `cramming-simple data --budget ...` first)")
        self.manifest = read_json(self.root / MANIFEST)
        self.seq_len = int(self.manifest["seq_len"])
        self.shards = []
        for shard in self.manifest["shards"]:
            path = self.root / shard["file"]
            if not path.exists():
                raise DataError(f"shard {path} is missing; delete {self.root} and prepare the data again")
            if verify and file_sha256(path) != shard["sha256"]:
                raise DataError(
                    f"shard {path} is corrupted (checksum differs from the one recorded at preparation); delete "
                    f"{self.root} and prepare the data again"
                )
            array = np.load(path, mmap_mode="r")
            if array.shape != (shard["rows"], self.seq_len):
                raise DataError(f"shard {path} has shape {array.shape}, expected ({shard['rows']}, {self.seq_len})")
            self.shards.append(array)
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Rows by global index -> (len(index), seq_len)."""
        shard_of = np.searchsorted(self.offsets, index, side="right") - 1
        out = np.empty((len(index), self.seq_len), dtype=self.shards[0].dtype)
        for s in np.unique(shard_of):
            pick = shard_of == s
            out[pick] = self.shards[s][index[pick] - self.offsets[s]]
        return out


# ----------------------------------------------------------------------------------------------- masking


MASKINGS = ("clean", "cramming")  # train.masking


class MLMCollator:
    """docs/recipe.md masking: exactly M = round(p T) positions per sequence. Two rules (train.masking):

    clean: pad and special tokens are never chosen; each chosen position is [MASK] / a random ordinary token /
      kept with probability 80 / 10 / 10 %.
    cramming (the published runs): any token but pad may be chosen, [SEP] and [CLS] included; exactly
      round(0.8 M) [MASK], round(0.1 M) random ids from the whole vocabulary, the rest kept (26 / 3 / 3 of 32).
    A row with fewer candidates than M gets IGNORE labels in its spare slots. Output shapes are static:
    positions and labels are (B, M).
    """

    def __init__(
        self,
        seq_len: int,
        mask_prob: float,
        mask_id: int,
        special_ids: list[int],
        vocab: int,
        seed: int,
        masking: str = "clean",
        pad_id: int = 0,
    ):
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
        self.seq_len, self.mask_id, self.seed, self.vocab = seq_len, mask_id, seed, vocab
        self.masking, self.pad_id = masking, pad_id
        self.masked = round(mask_prob * seq_len)
        if not 0 < self.masked <= seq_len:
            raise ValueError(f"mask_prob {mask_prob} masks {self.masked} of {seq_len} tokens")
        self.special = torch.zeros(max(vocab, max(special_ids) + 1), dtype=torch.bool)
        self.special[special_ids] = True
        self.ordinary = torch.nonzero(~self.special[:vocab]).squeeze(1)  # candidates for random replacement

    @classmethod
    def for_tokenizer(cls, tokenizer, seq_len: int, mask_prob: float, seed: int, masking: str = "clean") -> MLMCollator:
        """The collator of a Hugging Face tokenizer's [MASK], special tokens, vocabulary and pad."""
        return cls(
            seq_len,
            mask_prob,
            tokenizer.mask_token_id,
            tokenizer.all_special_ids,
            len(tokenizer),
            seed,
            masking,
            tokenizer.pad_token_id,
        )

    def reseeded(self, seed: int) -> MLMCollator:
        """The same masking with another seed (the held-out batches use data.EVAL_SEED)."""
        other = copy.copy(self)
        other.seed = seed
        return other

    def noise(self, samples: np.ndarray, stream: int) -> torch.Tensor:
        """(B, T) uniforms, a pure function of (seed, stream, sample index, column)."""
        cells = samples.astype(np.uint64)[:, None] * np.uint64(self.seq_len) + np.arange(self.seq_len, dtype=np.uint64)
        return torch.from_numpy(uniform(self.seed * 4 + stream, cells.ravel()).reshape(cells.shape))

    def __call__(self, rows: np.ndarray, samples: np.ndarray) -> dict[str, torch.Tensor]:
        """rows: (B, T) token ids; samples: (B,) their positions in the sample stream."""
        ids = torch.from_numpy(rows.astype(np.int64))  # (B, T)
        if self.masking == "cramming":
            return self.cramming(ids, samples)
        choose = self.noise(samples, 0).masked_fill(self.special[ids], 2.0)  # specials never win
        score, positions = choose.topk(self.masked, dim=1, largest=False, sorted=False)  # (B, M)
        labels = ids.gather(1, positions).masked_fill(score >= 2.0, IGNORE)
        action = self.noise(samples, 1).gather(1, positions)  # (B, M)
        pick = (self.noise(samples, 2).gather(1, positions) * len(self.ordinary)).long()
        replaced = torch.where(action < 0.8, self.mask_id, torch.where(action < 0.9, self.ordinary[pick], labels))
        replaced = torch.where(labels == IGNORE, ids.gather(1, positions), replaced)
        inputs = ids.scatter(1, positions, replaced)
        return {"input_ids": inputs, "positions": positions, "labels": labels}

    def cramming(self, ids: torch.Tensor, samples: np.ndarray) -> dict[str, torch.Tensor]:
        """The published runs' rule: specials may be chosen; exact [MASK] / random / kept counts per row."""
        choose = self.noise(samples, 0).masked_fill(ids == self.pad_id, 2.0)  # only pad is never chosen
        score, positions = choose.topk(self.masked, dim=1, largest=False, sorted=True)  # (B, M), random order
        labels = ids.gather(1, positions).masked_fill(score >= 2.0, IGNORE)
        slot = torch.arange(self.masked)  # the k-th chosen position of a row: its action is fixed by k
        n_mask, n_random = round(0.8 * self.masked), round(0.1 * self.masked)
        random_ids = (self.noise(samples, 2).gather(1, positions) * self.vocab).long()  # the whole vocabulary
        kept = ids.gather(1, positions)
        replaced = torch.where(slot < n_mask, self.mask_id, torch.where(slot < n_mask + n_random, random_ids, kept))
        replaced = torch.where(labels == IGNORE, kept, replaced)
        inputs = ids.scatter(1, positions, replaced)
        return {"input_ids": inputs, "positions": positions, "labels": labels}


# ----------------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Split:
    """Which prepared rows are held out for the eval loss and which are trained on: a pure function of the data.

    A fixed bijection of [0, N) keyed by the data hash puts `held` rows first (the held-out slice) and the
    other N - held after them (the training rows). Every run on the same preparation, whatever its block or
    seed, holds out the same rows; no held-out row is ever trained on. held = min(holdout, N // 10).
    """

    n: int
    held: int
    key: int

    @classmethod
    def of(cls, data: PackedData, holdout: int) -> Split:
        key = int(hashlib.sha256(data.root.name.encode()).hexdigest()[:15], 16)  # the folder name is the data hash
        return cls(len(data), min(holdout, len(data) // 10), key)

    @property
    def train_size(self) -> int:
        return self.n - self.held

    def heldout_rows(self) -> np.ndarray:
        return self._rows(np.arange(self.held, dtype=np.int64))

    def train_rows(self, index: np.ndarray) -> np.ndarray:
        """Training row i (0 <= i < n - held) -> its row in the prepared data."""
        return self._rows(index + self.held) if self.held else index

    def stored_train_rows(self, index: np.ndarray) -> np.ndarray:
        """Training row i -> the i-th prepared row that is not held out: the training rows in stored order."""
        return index + np.searchsorted(self._trained_before_held, index, side="right") if self.held else index

    @functools.cached_property
    def _trained_before_held(self) -> np.ndarray:
        """For each held-out row in stored order, how many training rows are stored before it (non-decreasing)."""
        return np.sort(self.heldout_rows()) - np.arange(self.held)

    def _rows(self, index: np.ndarray) -> np.ndarray:
        return permute(index, self.n, key=self.key)


@dataclass
class MicrobatchStream:
    """Microbatch b of rank r holds samples [(b W + r) B, (b W + r + 1) B) of an endless stream of training rows.

    order='shuffle': sample s is training row permute(s mod M, M, key(seed, epoch = s div M)) of the
    M = N - held training rows. order='stored': sample s is training row s mod M, the rows as prepared (for
    a hub source, the hub's row order), the seed unused; ranks take turns through it a microbatch at a time.
    """

    data: PackedData
    collate: MLMCollator
    microbatch: int
    seed: int
    rank: int = 0
    world: int = 1
    split: Split | None = None  # None: every row is a training row
    order: str = "shuffle"

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")

    def samples(self, b: int) -> np.ndarray:
        start = (b * self.world + self.rank) * self.microbatch
        return np.arange(start, start + self.microbatch, dtype=np.int64)

    def rows_of(self, samples: np.ndarray) -> np.ndarray:
        n = self.split.train_size if self.split else len(self.data)
        epoch, position = np.divmod(samples, n)
        if self.order == "stored":
            return self.split.stored_train_rows(position) if self.split else position
        index = np.empty_like(samples)
        for e in np.unique(epoch):
            pick = epoch == e
            index[pick] = permute(position[pick], n, key=self.seed * 100_003 + int(e))
        return self.split.train_rows(index) if self.split else index

    def __call__(self, b: int) -> dict[str, torch.Tensor]:
        samples = self.samples(b)
        return self.collate(self.data.rows(self.rows_of(samples)), samples)


EVAL_SEED = 2**31 - 1  # masking seed of the held-out batches: the same masks for every block and training seed


def heldout_batches(data: PackedData, split: Split, collate: MLMCollator, batch: int) -> list[dict[str, torch.Tensor]]:
    """The held-out slice as fixed MLM batches (CPU): masks from `collate` (built with EVAL_SEED), keyed by
    the held-out index, so they are identical for every run on the same preparation."""
    rows = split.heldout_rows()
    out = []
    for start in range(0, len(rows), batch):
        index = np.arange(start, min(start + batch, len(rows)), dtype=np.int64)
        out.append(collate(data.rows(rows[index]), index))
    return out


class Prefetcher:
    """Makes batches `start, start+1, ...` on a background thread and hands them over on the device.

    `consumed` counts the batches handed over: the data position a checkpoint records.
    """

    def __init__(
        self, make: Callable[[int], dict[str, torch.Tensor]], start: int, device: torch.device, depth: int = 4
    ):
        self.device, self.consumed = device, start
        self.pin = device.type == "cuda"
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(make, start), daemon=True)
        self.thread.start()

    def _work(self, make: Callable[[int], dict], b: int) -> None:
        try:
            while not self.stop.is_set():
                batch = make(b)
                if self.pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                while not self.stop.is_set():
                    try:
                        self.queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                b += 1
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            self.queue.put(err)

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self.queue.get()
        if isinstance(batch, BaseException):
            raise batch
        self.consumed += 1
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
