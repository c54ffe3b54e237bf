"""cramming_simple/bench/data.py: the bench's synthetic batches, and the data path timed against the training step."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.models import TINY

from cramming_simple.bench import (
    make_batch,
)
from cramming_simple.cli import main
from cramming_simple.model import IGNORE


def test_synthetic_batch_masks_exactly_a_quarter_of_every_row():
    data = make_batch(TINY, 5, torch.device("cpu"), seed=0)
    assert data.input_ids.shape == (5, 128) and data.positions.shape == (5, 32)
    for row in data.positions:
        assert len(set(row.tolist())) == 32 and torch.equal(row, row.sort().values)
    assert torch.equal(data.labels, data.input_ids.gather(1, data.positions))
    dense = data.dense_labels()
    assert ((dense != IGNORE).sum(dim=1) == 32).all()
    assert torch.equal(dense.gather(1, data.positions), data.labels)


def test_bench_data_times_the_data_path_against_the_training_step(smoke_cache, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "--data",
            "--budget",
            "smoke",
            f"data.cache_dir={smoke_cache}",
            "train.microbatch=8",
            "--device",
            "cpu",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--json",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((out / "bench_data.json").read_text()) and (out / "bench_data.md").exists()
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == ["produce", "deliver", "train"] and rows["train"]["x_train_step"] == 1.0
    for r in rows.values():
        assert r["seconds"] > 0 and r["tokens_per_s"] == pytest.approx(8 * 128 / r["seconds"])
        assert r["x_train_step"] == pytest.approx(rows["train"]["seconds"] / r["seconds"])
    assert result["settings"]["microbatch"] == 8 and result["settings"]["arch"] == "tiny"
