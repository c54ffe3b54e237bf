"""cramming_simple/train/evaluate.py: the held-out rows and their loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SMOKE_VOCAB

from cramming_simple.data import MLMCollator, PackedData, Split, load_tokenizer, prepared_path
from cramming_simple.data.sources import DataConfig
from cramming_simple.model import MaskedLM, arch_config
from cramming_simple.train.distributed import Dist
from cramming_simple.train.evaluate import HeldOut


def smoke_data(cache) -> PackedData:
    return PackedData(
        prepared_path(DataConfig(source="builtin", cache_dir=str(cache), shard_sequences=1024), SMOKE_VOCAB, 128)
    )


def collator(data: PackedData, seed: int) -> MLMCollator:
    tok = load_tokenizer(data.root / "tokenizer")
    return MLMCollator(128, 0.25, tok.mask_token_id, tok.all_special_ids, len(tok), seed)


def test_heldout_rows_never_reach_the_training_stream_and_are_the_same_for_every_run(smoke_cache):
    from cramming_simple.data import MicrobatchStream

    data = smoke_data(smoke_cache)
    split = Split.of(data, 2048)
    assert split.held == min(2048, len(data) // 10) > 0
    held = set(split.heldout_rows().tolist())
    assert len(held) == split.held and held == set(Split.of(smoke_data(smoke_cache), 2048).heldout_rows().tolist())
    for seed in (0, 7):  # two training seeds, two epochs each: every training row twice, no held-out row ever
        stream = MicrobatchStream(data, collator(data, seed), microbatch=64, seed=seed, split=split)
        rows = stream.rows_of(np.arange(2 * split.train_size))
        assert not held & set(rows.tolist())
        assert np.bincount(rows, minlength=len(data))[sorted(set(range(len(data))) - held)].tolist() == [2] * (
            len(data) - split.held
        )
    # holdout=0 reads every row, as runs before held-out evaluation did
    no_split = Split.of(data, 0)
    assert no_split.held == 0 and np.array_equal(no_split.train_rows(np.arange(10)), np.arange(10))


def test_heldout_loss_scores_the_same_masks_for_any_training_seed_and_is_deterministic(smoke_cache):
    data = smoke_data(smoke_cache)
    split = Split.of(data, 64)
    a = HeldOut(data, split, collator(data, seed=0), 16, Dist(), torch.device("cpu"), None)
    b = HeldOut(data, split, collator(data, seed=9), 16, Dist(), torch.device("cpu"), None)
    assert len(a.batches) == 4 and all(
        torch.equal(x[k], y[k]) for x, y in zip(a.batches, b.batches) for k in ("input_ids", "positions", "labels")
    )
    torch.manual_seed(0)
    model = MaskedLM(arch_config("tiny"), "sas")
    first, second = a.loss(model), b.loss(model)
    assert first == second and math.isfinite(first) and model.training  # back in training mode afterwards
    # the token-weighted mean over all masked tokens of the slice
    with torch.no_grad():
        total = sum(float(model.eval()(**x)) * int((x["labels"] != -100).sum()) for x in a.batches)
    count = sum(int((x["labels"] != -100).sum()) for x in a.batches)
    model.train()
    assert first == pytest.approx(total / count, rel=1e-6)
