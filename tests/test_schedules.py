"""The budget triangle and the batch ramp at their edges (docs/recipe.md)."""

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
