"""cramming_simple/train/schedules.py: the budget triangle and the batch ramp at their edges (docs/recipe.md)."""

from __future__ import annotations

import pytest

from cramming_simple.train.schedules import accumulation_at, batch_at, lr_at

PEAK = 1e-3


@pytest.mark.parametrize(
    "p, expected",
    [(0.0, 0.25), (0.25, 0.5), (0.6, 0.85), (0.75, 1.0), (0.9, 0.4), (1.0, 0.0), (1.5, 0.0), (-0.1, 0.25)],
)
def test_budget_triangle(p, expected):
    assert lr_at(p, PEAK) == pytest.approx(expected * PEAK)


def test_triangle_peaks_at_three_quarters():
    grid = [i / 1000 for i in range(1001)]
    assert max(grid, key=lambda p: lr_at(p, PEAK)) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "p, expected", [(0.0, 128), (0.3, 4096 + 64 - 64), (0.6, 8192), (0.75, 8192), (1.0, 8192), (2.0, 8192)]
)
def test_batch_ramp_edges(p, expected):
    # 128 + (8192 - 128) * 0.5 = 4160 -> rounded down to a multiple of 128: 4096
    assert batch_at(p, 128, 8192, 0.6) == expected


def test_batch_sizes_are_multiples_of_the_microbatch_and_non_decreasing():
    sizes = [batch_at(i / 997, 96, 8192, 0.6) for i in range(1200)]
    assert all(s % 96 == 0 and 96 <= s <= 8192 for s in sizes)
    assert sizes == sorted(sizes)
    assert sizes[0] == 96 and max(sizes) == 8160  # 8192 is not a multiple of 96


def test_accumulation_counts_the_global_batch():
    assert accumulation_at(0.0, 128, 8192, 0.6, world_size=8) == 1
    assert accumulation_at(0.6, 128, 8192, 0.6, world_size=8) == 8  # 8 ranks x 128 x 8 = 8192
    assert accumulation_at(0.6, 128, 8192, 0.6, world_size=1) == 64
    assert accumulation_at(1.0, 512, 8192, 0.6, world_size=32) == 1  # never below one microbatch per rank


@pytest.mark.parametrize("p", [0.0, 0.001, 0.1, 0.3, 0.45, 0.59, 0.590625, 0.6, 0.8, 1.0])
def test_cramming_ramp_is_its_formula(p):
    # cramming: microbatch x (floor(p x 8192 / (0.6 x microbatch)) + 1), capped at 8192
    expected = min(8192, 128 * (int(p * 8192 / (0.6 * 128)) + 1))
    assert batch_at(p, 128, 8192, 0.6, ramp="cramming") == expected


def test_cramming_ramp_reaches_the_cap_before_the_linear_one():
    assert batch_at(0.3, 128, 8192, 0.6, ramp="cramming") == 4224 > batch_at(0.3, 128, 8192, 0.6) == 4096
    first_full = min(i / 10_000 for i in range(10_001) if batch_at(i / 10_000, 128, 8192, 0.6, ramp="cramming") == 8192)
    assert first_full == pytest.approx(63 * 0.6 * 128 / 8192, abs=1e-4) and first_full < 0.6  # p = 0.5906
    assert accumulation_at(0.3, 128, 8192, 0.6, world_size=1, ramp="cramming") == 33


def test_cramming_ramp_sets_the_learning_rate_every_microbatch(smoke_cache, tmp_path):
    """linear: the LR changes only at optimiser steps; cramming: before every microbatch, as its LambdaLR did."""
    from conftest import smoke_config

    from cramming_simple.train.loop import Trainer

    seen = {}
    for ramp in ("linear", "cramming"):
        cfg = smoke_config(
            smoke_cache, "preln", 4.0, f"train.ramp={ramp}", "train.batch_max=128", "impl.eval_minutes=0", name=ramp
        )
        lrs = []
        original = Trainer.microbatch

        def record(self, batch, lrs=lrs, original=original):
            lrs.append((self.accumulated, self.optimizer.param_groups[0]["lr"]))
            return original(self, batch)

        from cramming_simple.train import loop

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(loop.Trainer, "microbatch", record)
            loop.pretrain(cfg, tmp_path)
        seen[ramp] = lrs
    within_step = {r: [lr for acc, lr in seen[r] if acc > 0] for r in seen}
    # with 4 microbatches per optimiser step, the LR moves inside a step only under cramming's ramp
    assert within_step["linear"] and within_step["cramming"]
    linear_changes = sum(a[1] != b[1] for a, b in zip(seen["linear"], seen["linear"][1:]) if b[0] > 0)
    cramming_changes = sum(a[1] != b[1] for a, b in zip(seen["cramming"], seen["cramming"][1:]) if b[0] > 0)
    assert linear_changes == 0 and cramming_changes > 0
