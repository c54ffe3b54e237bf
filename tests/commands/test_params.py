"""cramming_simple/commands/params.py: `cramming-simple params` as JSON and as a table."""

from __future__ import annotations

import json

from cramming_simple.cli import main
from cramming_simple.model import BLOCKS


def test_params_json_counts_every_block(capsys):
    assert main(["params", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert list(counts) == list(BLOCKS)
    for c in counts.values():
        assert set(c) == {"params", "non_embedding"} and c["params"] - c["non_embedding"] == 32768 * 768 + 1 + 2 * 768
    assert abs(counts["preln"]["params"] - 120e6) < 0.5e6 and abs(counts["sasp"]["params"] - 101e6) < 0.5e6


def test_params_table_names_blocks_and_arch(capsys):
    assert main(["params", "--arch", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "arch: tiny" in out and all(BLOCKS[b].title in out for b in BLOCKS)
