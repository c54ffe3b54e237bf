"""Shared fixtures: generic, offline, CPU-fast."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.blocks import BLOCK_SOURCE
from helpers.glue_data import make_glue, sentiment_words, write_parquet, write_tsv
from helpers.references import HOLDOUT, HOURS
from helpers.runs import OFFSET, make_run, report
from helpers.tokenizers import UPLOAD_SPECIALS, cramming_tokenizer
from omegaconf import OmegaConf

from cramming_simple.cli import main
from cramming_simple.data import load_tokenizer
from cramming_simple.glue.tasks import COLUMNS
from cramming_simple.hardware import USER_ENV, find_reference
from cramming_simple.sweep import SweepConfig, plan
from cramming_simple.train.config import PretrainConfig

# transformers' own common model tests run through `make test-hf`, which fetches their modules first and names
# them in CRAMMING_SIMPLE_HF_TESTS; without it there is nothing to import them from.
collect_ignore = [] if os.environ.get("CRAMMING_SIMPLE_HF_TESTS") else ["hf_common"]

WORDS = (
    "the a an this that some every one two few many of in on at with from by for to and or but not very quite "
    "film movie story plot actor scene music ending cast script book day night man woman city house road car "
    "good great fine lovely superb brilliant wonderful excellent bad awful poor boring dull terrible weak horrible "
    "is was seems felt looks became remains runs goes makes takes gives sees knows thinks says wants finds"
).split()


def generic_text(n: int, seed: int = 0) -> list[str]:
    """Random sentences over a small English word list: enough for a tokenizer to learn every word whole."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(n)]


@pytest.fixture(scope="session", autouse=True)
def console_logging():
    """The command line's logging (info on stdout, warnings on stderr), which the package no longer sets up on
    import: tests of library functions read what a command would print. codebase/test_state.py checks the import
    itself."""
    from cramming_simple.console import setup_logging

    setup_logging(0)


# ------------------------------------------------------------------------------------------ pretraining

SMOKE_VOCAB = 8192  # the tiny preset's vocabulary, as budgets/smoke.yaml uses it


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory):
    """A data cache with the smoke budget's built-in corpus prepared once per session (tokenizer + shards)."""
    from cramming_simple.data import DataConfig, prepare

    cache = tmp_path_factory.mktemp("data-cache")
    prepare(
        DataConfig(source="builtin", cache_dir=str(cache), shard_sequences=1024), SMOKE_VOCAB, 128, show_progress=False
    )
    return cache


def smoke_config(cache, block: str, seconds: float, *overrides: str, name: str | None = None):
    """The smoke budget, shortened to `seconds`, reading the session's prepared data."""

    return PretrainConfig.from_budget(
        "smoke", block, [f"hours={seconds / 3600}", f"data.cache_dir={cache}", "impl.device=cpu", *overrides], name=name
    )


def pretrain_args(cache, runs: Path, *extra: str, block: str = "preln") -> list[str]:
    """The command line of a smoke-budget pretraining run on CPU, reading the session's prepared data."""
    return [
        "pretrain",
        "--block",
        block,
        "--budget",
        "smoke",
        "--runs-dir",
        str(runs),
        f"data.cache_dir={cache}",
        "impl.device=cpu",
        *extra,
    ]


@pytest.fixture(scope="session")
def pretrained_run(smoke_cache, tmp_path_factory):
    """A smoke-pretrained run folder: the tiny Pre-LN encoder after a short `smoke` budget on the built-in corpus."""
    from cramming_simple.train.loop import pretrain

    runs = tmp_path_factory.mktemp("pretrained")
    pretrain(smoke_config(smoke_cache, "preln", 8.0, "impl.log_seconds=2", name="tiny-preln"), runs)
    return runs / "tiny-preln"


# ------------------------------------------------------------------------------------------ processes


def children(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc), children before grandchildren."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def hold_lock(path: Path, purpose: str) -> subprocess.Popen:
    """Another process that takes the lock at `path` and holds it until killed; returns once it holds it."""
    script = Path(__file__).parent / "scripts" / "hold_lock.py"
    holder = subprocess.Popen([sys.executable, str(script), str(path), purpose], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.fixture(scope="module")
def glue_dir(pretrained_run, tmp_path_factory):
    """Hub-layout parquet data for every task, learnable SST-2 in the run's own words; small sets elsewhere."""
    words = sentiment_words(load_tokenizer(pretrained_run / "model"))
    glue = make_glue({"sst2": 320, "default": 48}, n_eval=64, words=words)
    return write_parquet(glue, tmp_path_factory.mktemp("glue-parquet"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and CI's two cores are shared with the spawned workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_glue(pretrained_run):
    return make_glue({"default": 24}, n_eval=8, words=sentiment_words(load_tokenizer(pretrained_run / "model")))


@pytest.fixture(scope="module")
def two_blocks_with_predictions(tmp_path_factory):
    """preln and sas run folders whose seed results come with per-example predictions (sas a bit better)."""
    from cramming_simple.glue.runner import predictions_path

    root = tmp_path_factory.mktemp("paired")
    rng = np.random.default_rng(0)
    runs = {b: make_run(root, f"{b}-24h", b) for b in ("preln", "sas")}
    truth, files = {}, {}
    for c in COLUMNS:
        n = 40
        truth[c.label] = y = rng.random(n) * 5 if c.metric == "pearson" else rng.integers(0, 2, n)
        for block, run in runs.items():
            for seed in OFFSET:
                if c.metric == "pearson":
                    p = y + rng.normal(0, 2 if block == "preln" else 1, n)
                else:
                    p = np.where(rng.random(n) < (0.85 if block == "sas" else 0.7), y, 1 - y)
                arrays = files.setdefault(predictions_path(run / "glue" / c.task / f"seed{seed}.json"), {})
                arrays |= {f"{c.split}.index": np.arange(n), f"{c.split}.prediction": p, f"{c.split}.label": y}
    for path, arrays in files.items():  # MNLI: both splits in one file
        np.savez(path, **arrays)
    return root, runs, truth


@pytest.fixture(scope="session")
def block_runs(pretrained_run, smoke_cache, tmp_path_factory) -> dict[str, Path]:
    """Smoke-pretrained runs of Pre-LN (the session's), SAS and SAS-P (a few seconds each)."""
    from cramming_simple.train.loop import pretrain

    root = tmp_path_factory.mktemp("hf-runs")
    for block in ("sas", "sasp"):
        pretrain(smoke_config(smoke_cache, block, 3.0, "impl.log_seconds=2", name=f"{block}-smoke"), root)
    return {"preln": pretrained_run, "sas": root / "sas-smoke", "sasp": root / "sasp-smoke"}


@pytest.fixture(scope="session")
def glue_parquet(pretrained_run, tmp_path_factory):
    words = sentiment_words(load_tokenizer(pretrained_run / "model"))
    return write_parquet(make_glue({"default": 24}, n_eval=8, words=words), tmp_path_factory.mktemp("glue"))


QUICK_CALIBRATION = ["impl.device=cpu", "impl.calibration_seconds=1"]  # a short calibration: a few rounds


@pytest.fixture(scope="session")
def double(tmp_path_factory):
    """This machine calibrated and saved as a reference (`calibrate --save --json`), and a reference at twice its
    rate: its budget's hours are about twice as many hours here."""
    root = tmp_path_factory.mktemp("references")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(USER_ENV, str(root / "saved"))
        out = root / "calibrate.json"
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert main(["calibrate", "--budget", "smoke", "--save", "here", "--json", *QUICK_CALIBRATION]) == 0
        out.write_text(buffer.getvalue())
        saved = find_reference("here")
    entry = json.loads(out.read_text())
    path = root / "double.yaml"  # (its budget's data goes to a cache of its own: other tests count the session's)
    values = {**entry, "name": "double", "preln_microbatches_per_s": 2 * saved.preln_microbatches_per_s}
    del values["rate_low"], values["rate_high"]
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(values)))
    return {"entry": entry, "saved": saved, "path": path, "folder": root / "saved", "cache": root / "cache"}


@pytest.fixture(scope="session")
def reference_run(double, tmp_path_factory):
    """A smoke run whose budget is in hours of the `double` reference (data sized to that budget)."""
    root = tmp_path_factory.mktemp("reference-run")
    runs, cache = root / "runs", f"data.cache_dir={double['cache']}"
    args = ["pretrain", "--block", "preln", "--budget", "smoke", "--runs-dir", str(runs), "--reference"]
    assert main([*args, str(double["path"]), HOURS, HOLDOUT, cache, "impl.log_seconds=1", *QUICK_CALIBRATION]) == 0
    return runs / "preln-smoke-double"


@pytest.fixture(scope="session")
def sweep_runs(double, tmp_path_factory):
    """A sweep of Pre-LN and SAS-P on the `double` reference budget, capped at 4 microbatch steps: far below what the
    calibration projects (2.88 x the saved rate), so both warn before their first step and stop at equal steps."""
    runs = tmp_path_factory.mktemp("sweep") / "runs"
    over = [HOURS, HOLDOUT, f"data.cache_dir={double['cache']}", "train.max_microbatches=4", *QUICK_CALIBRATION]
    cfg = SweepConfig(
        ["preln", "sasp"], [0], "smoke", runs, "smoke", "rte", overrides=over, reference=str(double["path"])
    )
    jobs, errors = [j for j in plan(cfg) if j.kind == "pretrain"], {}
    for job in jobs:  # the sweep's own command lines, run here (the launchers run them in a child process)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(job.argv) == 0, err.getvalue()
        errors[job.name] = err.getvalue()
    return runs, jobs, errors


@pytest.fixture(scope="session")
def paper_like(tmp_path_factory):
    """preln, sas, sasp on one GPU and budget; sasp: CoLA failed on every seed, RTE seed 3 never ran."""
    root = tmp_path_factory.mktemp("runs")
    make_run(root, "preln-24h", "preln")
    make_run(root, "sas-24h", "sas")
    make_run(root, "sasp-24h", "sasp", fail=[("cola", s) for s in OFFSET], skip=[("rte", 3)])
    out = root.parent / "report"
    code, stdout, stderr = report(["--runs-dir", str(root), "--out", str(out)])
    assert code == 0, stderr
    return out, stdout, stderr


@pytest.fixture(scope="session")
def glue_tsv(pretrained_run, tmp_path_factory):
    words = sentiment_words(load_tokenizer(pretrained_run / "model"))
    return write_tsv(make_glue({"default": 24}, n_eval=16, words=words), tmp_path_factory.mktemp("cluster-glue"))


@pytest.fixture(scope="session")
def upload(tmp_path_factory) -> Path:
    """DIR/data/train-*.parquet (input_ids, 128 per row, documents joined by the template's <sep>) and
    DIR/tokenizer/ (tokenizer.json), as JonasGeiping/the_pile_WordPiece... is laid out."""
    repo = tmp_path_factory.mktemp("upload") / "user--pile-readymade"
    texts = generic_text(3000, seed=11)
    tokenizer = cramming_tokenizer(texts, vocab_size=600)
    assert tokenizer.pad_token_id == UPLOAD_SPECIALS.index("<pad>") != 0
    tokenizer.save_pretrained(str(repo / "tokenizer"))
    stream = np.concatenate([np.asarray(ids) for ids in tokenizer(texts)["input_ids"]])  # "$A <sep>" per document
    rows = stream[: len(stream) // 128 * 128].reshape(-1, 128)
    (repo / "data").mkdir()
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        pd.DataFrame({"input_ids": list(part)}).to_parquet(repo / "data" / f"train-0000{i}-of-00002.parquet")
    return repo


@pytest.fixture(scope="session")
def block_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "my_blocks.py"
    path.write_text(BLOCK_SOURCE)
    return path
