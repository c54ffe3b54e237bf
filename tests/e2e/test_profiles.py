"""End to end: both recipes (the published and the clean profile) through pretrain, glue and report."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re

import torch
from helpers.glue_data import make_glue, sentiment_words, write_parquet

from cramming_simple.cli import main
from cramming_simple.data import load_tokenizer
from cramming_simple.glue import finetune
from cramming_simple.runtime import autocast_dtype, precision_name


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_both_profiles_run_end_to_end_and_the_report_names_them(smoke_cache, tmp_path, monkeypatch):
    """smoke and smoke-published: pretraining, GLUE (fp16 with a GradScaler on CPU for the published one, with
    CoLA's warmup for every task), and a report that names both profiles and warns that they differ."""
    runs = tmp_path / "runs"
    for budget in ("smoke", "smoke-published"):
        code, out = cli(
            "pretrain",
            "--block",
            "sasp-nonorm",
            "--budget",
            budget,
            "--runs-dir",
            str(runs),
            f"data.cache_dir={smoke_cache}",
            "impl.device=cpu",
            "hours=0.002",
            "train.max_steps=6",
            "impl.eval_minutes=0",
            "data.holdout=64",
        )
        assert code == 0, out
        profile = "clean" if budget == "smoke" else "published"
        assert f"profile {profile}" in out
        summary = json.loads((runs / f"sasp-nonorm-{budget}" / "summary.json").read_text())
        auto = precision_name(autocast_dtype(torch.device("cpu"), "auto"))  # bf16 where the CPU has it
        assert summary["profile"] == profile and summary["precision"] == ("fp16" if profile == "published" else auto)
        assert math.isfinite(summary["eval_loss"])
    published_run = runs / "sasp-nonorm-smoke-published"
    clean_params = json.loads((runs / "sasp-nonorm-smoke" / "summary.json").read_text())["params"]
    assert json.loads((published_run / "summary.json").read_text())["params"] == clean_params + 2 * 128

    words = sentiment_words(load_tokenizer(published_run / "model"))
    glue_dir = write_parquet(make_glue({"cola": 200, "default": 48}, n_eval=32, words=words), tmp_path / "glue")
    scalers = []
    real = torch.amp.GradScaler

    def spy(*args, **kwargs):
        scalers.append(real(*args, **kwargs))
        return scalers[-1]

    monkeypatch.setattr(finetune.torch.amp, "GradScaler", spy)
    for budget, protocol in (("smoke", "smoke"), ("smoke-published", "smoke-published")):
        run = runs / f"sasp-nonorm-{budget}"
        code, out = cli("glue", str(run), "--data-dir", str(glue_dir), "--protocol", protocol, "--tasks", "rte")
        assert code == 0, out
        result = json.loads((run / "glue" / "rte" / "seed1.json").read_text())
        # rte: 48 examples, 3 steps per epoch x 5 = 15; cola: 200 examples, 13 x 5 = 65 steps
        assert result["steps"] == 15
        assert result["warmup_steps"] == (math.ceil(0.1 * 15) if protocol == "smoke" else int(0.1 * 65))
    assert [s.is_enabled() for s in scalers] == [False, True]
    assert scalers[1].get_scale() > 0 and scalers[1]._scale is not None  # used: scaling started

    code, out = cli("report", "--runs-dir", str(runs), "--out", str(tmp_path / "report"), "--reference", "none")
    assert code == 0, out
    index = (tmp_path / "report" / "index.md").read_text()
    assert re.search(r"sasp-nonorm-smoke\*\* \([^)]*\): profile clean", index)
    assert re.search(r"sasp-nonorm-smoke-published\*\* \([^)]*\): profile published", index)
    assert "profile clean)" in index and "profile published)" in index  # the GLUE protocols' profiles
    assert "runs differ in pretraining profile" in index and "runs differ in GLUE profile" in index
