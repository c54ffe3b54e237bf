"""cramming_simple/check/card.py: check-block's report card of a block before any GPU time."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers.commands import cli
from helpers.models import TINY


def check(ref: str, cache: Path, out: Path, *extra: str) -> tuple[int, dict, str]:
    code, _, err = cli("check-block", ref, "--arch", "tiny", "--out", str(out), f"data.cache_dir={cache}", *extra)
    result = json.loads((out / "check.json").read_text()) if (out / "check.json").exists() else {}
    return code, result, err


@pytest.mark.parametrize("block", ["preln", "sas", "sasp"])
def test_check_block_passes_the_published_blocks(block, smoke_cache, tmp_path):
    code, result, err = check(block, smoke_cache, tmp_path, "--speed-steps", "3")
    assert code == 0 and result["verdict"] != "fail", err
    status = {line["check"]: line["status"] for line in result["lines"]}
    assert list(status) == [
        "shapes (fp32)",
        "shapes (bf16)",
        "padding invariance",
        "finite (fp32)",
        "finite (bf16)",
        "gradients",
        "parameters",
        "rank collapse (init)",
        "norm growth (init)",
        "trainability",
        "speed",
        "torch.compile",
    ]
    # speed may warn: at the tiny size on a CPU, eager, a block can truly be slower than Pre-LN; never a failure
    assert {s for name, s in status.items() if name != "speed"} == {"pass"}, result["lines"]
    assert status["speed"] in ("pass", "warn")
    assert set(result["signal"]) == {block, "preln", "sas"}
    assert len(result["signal"][block]["cos"]) == TINY.depth + 1
    assert (tmp_path / "signal.png").stat().st_size > 0 and (tmp_path / "signal.pdf").stat().st_size > 0
    assert "| torch.compile | PASS |" in (tmp_path / "check.md").read_text()


def test_check_block_flags_rank_collapse(block_file, smoke_cache, tmp_path):
    code, result, err = check(f"{block_file}:NoSkip", smoke_cache, tmp_path, "--skip", "train,speed,compile")
    assert code == 0, err  # a warning, not a failure
    line = next(x for x in result["lines"] if x["check"] == "rank collapse (init)")
    assert line["status"] == "warn" and result["verdict"] == "warn"
    assert result["signal"][f"{block_file}:NoSkip"]["cos"][-1] > 0.9
    assert result["signal"]["preln"]["cos"][-1] < 0.9


def test_check_block_fails_fast_on_a_wrong_shape(block_file, tmp_path):
    cache = tmp_path / "cache"
    code, result, err = check(f"{block_file}:WrongShape", cache, tmp_path / "out")
    assert code == 2 and result == {} and "shaped like x" in err and len(err.strip().splitlines()) == 1
    assert not cache.exists()  # stopped before any data preparation


def test_check_block_fails_a_block_that_ignores_padding(tmp_path, smoke_cache):
    leaky = tmp_path / "leaky.py"
    leaky.write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Leaky(nn.Module):
                '''Mixes every position, padded or not, into every other: ignores the mask.'''
                def __init__(self, cfg, layer):
                    super().__init__()
                def forward(self, x, mask):
                    return x + x.mean(dim=1, keepdim=True)
            """
        )
    )
    code, result, _ = check(f"{leaky}:Leaky", smoke_cache, tmp_path / "out", "--skip", "signal,train,speed,compile")
    assert code == 1 and result["verdict"] == "fail"
    status = {line["check"]: line["status"] for line in result["lines"]}
    assert status["padding invariance"] == "fail" and status["gradients"] == "pass"
