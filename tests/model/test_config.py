"""cramming_simple/model/config.py: bad arch configs and unknown blocks fail at construction, naming the valid ones."""

from __future__ import annotations

import pytest
from helpers.models import TINY

from cramming_simple.config import ConfigError
from cramming_simple.model import (
    BLOCKS,
    Encoder,
    arch_config,
)


def test_unknown_block_fails_with_the_valid_names():
    with pytest.raises(ConfigError) as err:
        Encoder(TINY, "preLN")
    for name in BLOCKS:
        assert name in str(err.value)


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"heads": 3}, "divide"),
        ({"width": 0}, "positive"),
        ({"depth": -1}, "positive"),
        ({"glu_width": 511}, "even"),
        ({"widht": 64}, "Valid keys"),
    ],
)
def test_bad_arch_configs_fail_at_construction(overrides, words):
    with pytest.raises(ConfigError) as err:
        arch_config("tiny", **overrides)
    assert words in str(err.value)


def test_unknown_arch_preset_lists_presets():
    with pytest.raises(ConfigError) as err:
        arch_config("huge")
    assert "crammed-bert" in str(err.value) and "tiny" in str(err.value)
