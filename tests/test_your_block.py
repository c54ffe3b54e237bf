"""A user's own block: registered by file, module or entry point; through pretrain, glue, report and bench; its
source recorded and checked; errors in one line; the examples; check-block's report card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import pretrain_args
from helpers.commands import cli
from helpers.glue_data import make_glue, sentiment_words, write_parquet

from cramming_simple.cli import main
from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.folders import load_model
from cramming_simple.model import ENTRY_POINT_GROUP, MaskedLM, arch_config, block_spec
from cramming_simple.model.blocks import BLOCKS
from cramming_simple.train.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "blocks"
TINY = arch_config("tiny", vocab_size=512)

BLOCK_SOURCE = '''
import torch
from torch import nn
from cramming_simple.model.layers import GLU, Attention, norm


class Scaled(nn.Module):
    """Pre-LN with its branches scaled by a fixed 0.5."""

    title = "Scaled Pre-LN"
    lr = 2e-3

    def __init__(self, cfg, layer):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm(cfg), Attention(cfg), norm(cfg), GLU(cfg)

    def forward(self, x, mask):
        x = x + 0.5 * self.attn(self.norm1(x), mask)
        return x + 0.5 * self.mlp(self.norm2(x))


class NoSkip(nn.Module):
    """Plain attention and MLP without skip connections: its token representations collapse with depth."""

    def __init__(self, cfg, layer):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = norm(cfg), Attention(cfg), norm(cfg), GLU(cfg)

    def forward(self, x, mask):
        return self.mlp(self.norm2(self.attn(self.norm1(x), mask)))


class WrongShape(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.proj = nn.Linear(cfg.width, cfg.width // 2)

    def forward(self, x, mask):
        return self.proj(x)


class WrongSignature(nn.Module):
    def __init__(self, cfg):
        super().__init__()

    def forward(self, x, mask):
        return x
'''


@pytest.fixture(scope="module")
def block_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "my_blocks.py"
    path.write_text(BLOCK_SOURCE)
    return path


@pytest.fixture(scope="module")
def user_run(smoke_cache, block_file, tmp_path_factory) -> Path:
    """A smoke-pretrained run of the user's Scaled block, started from the command line."""
    runs = tmp_path_factory.mktemp("user-runs")
    code = main(pretrain_args(smoke_cache, runs, "hours=0.0015", block=f"{block_file}:Scaled"))
    assert code == 0
    return runs / "scaled-smoke"


# ----------------------------------------------------------------------------------------------- registering


def test_a_file_block_resolves_with_its_title_recipe_and_source(block_file, monkeypatch):
    monkeypatch.chdir(block_file.parent)
    spec = block_spec("my_blocks.py:Scaled")  # relative to the working directory, recorded absolute
    assert spec.ref == f"{block_file}:Scaled" and spec.name == "scaled" and spec.title == "Scaled Pre-LN"
    assert spec.source["kind"] == "file" and spec.source["path"] == str(block_file)
    assert spec.source_text == BLOCK_SOURCE and len(spec.source["sha256"]) == 64
    cfg = PretrainConfig.from_budget("smoke", "my_blocks.py:Scaled")
    assert cfg.name == "scaled-smoke" and cfg.block == spec.ref and cfg.block_source == spec.source
    assert cfg.train.lr == 2e-3 and cfg.train.weight_decay == BLOCKS["preln"].recipe.weight_decay
    no_title = block_spec("my_blocks.py:NoSkip")
    assert no_title.title == "NoSkip" and no_title.lr is None


@pytest.mark.parametrize(
    "ref, message",
    [
        ("{dir}/absent.py:Scaled", "block file not found"),
        ("{file}:Missing", "no class 'Missing' in"),
        ("{file}:WrongSignature", "must be built as WrongSignature(cfg: ArchConfig, layer: int)"),
        ("{file}:WrongShape", "must return the residual stream shaped like x"),
        ("no_such_module_xyz:Block", "cannot import block module 'no_such_module_xyz'"),
        ("nonsense", "unknown block 'nonsense'"),
    ],
)
def test_a_broken_block_fails_in_one_line_before_any_data(block_file, tmp_path, ref, message):
    cache = tmp_path / "cache"
    cache.mkdir()
    ref = ref.format(dir=block_file.parent, file=block_file)
    code, _, err = cli(*pretrain_args(cache, tmp_path / "runs", block=ref))
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not any(cache.iterdir()) and not (tmp_path / "runs").exists()  # nothing prepared, no run folder


def test_entry_point_blocks_of_an_installed_package(tmp_path, monkeypatch):
    """A package that registers `scaled-ep` under the entry-point group, installed as pip would (dist-info)."""
    site = tmp_path / "site"
    (site / "my_block_pkg").mkdir(parents=True)
    (site / "my_block_pkg" / "__init__.py").write_text(BLOCK_SOURCE)
    info = site / "my_block_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-block-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nscaled-ep = my_block_pkg:Scaled\n")
    env = {**os.environ, "PYTHONPATH": f"{site}:{ROOT}"}
    out = subprocess.run(
        [sys.executable, "-m", "cramming_simple", "params", "--arch", "tiny", "--blocks", "preln,scaled-ep", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    counts = json.loads(out.stdout)
    assert set(counts) == {"preln", "scaled-ep"} and counts["scaled-ep"] == counts["preln"]

    monkeypatch.syspath_prepend(str(site))
    cfg = PretrainConfig.from_budget("smoke", "scaled-ep")
    assert cfg.name == "scaled-ep-smoke" and cfg.block == "scaled-ep"
    assert cfg.block_source["kind"] == "entry_point" and cfg.block_source["module"] == "my_block_pkg"
    assert block_spec("my_block_pkg:Scaled").source["kind"] == "module"  # the module route, same class
    assert isinstance(
        MaskedLM(TINY, "scaled-ep").encoder.layers[0], type(MaskedLM(TINY, "my_block_pkg:Scaled").encoder.layers[0])
    )


# ----------------------------------------------------------------------------------------------- end to end


def test_a_user_block_goes_through_pretrain_glue_report_and_bench(user_run, block_file, pretrained_run, tmp_path):
    summary = json.loads((user_run / "summary.json").read_text())
    assert summary["completed"] and summary["block"] == f"{block_file}:Scaled"
    assert summary["block_title"] == "Scaled Pre-LN" and summary["block_source"]["kind"] == "file"
    config = json.loads((user_run / "model" / "config.json").read_text())
    assert config["block_source"]["sha256"] == summary["block_source"]["sha256"]
    assert (user_run / "model" / "block.py").read_text() == BLOCK_SOURCE  # the saved model embeds its source

    words = sentiment_words(load_tokenizer(user_run / "model"))
    glue_dir = write_parquet(make_glue({"default": 48}, n_eval=32, words=words), tmp_path / "glue")
    code, out, err = cli(
        "glue",
        str(user_run),
        "--data-dir",
        str(glue_dir),
        "--protocol",
        "smoke",
        "--tasks",
        "rte",
        "--seeds",
        "1",
        "epochs=1",
    )
    assert code == 0, err
    assert (user_run / "glue" / "rte" / "seed1.json").exists()

    code, _, err = cli("report", str(pretrained_run), str(user_run), "--out", str(tmp_path / "report"))
    assert code == 0, err
    table1 = (tmp_path / "report" / "table1.md").read_text()
    assert "Scaled Pre-LN" in table1 and "Pre-LN" in table1
    table2 = pd.read_csv(tmp_path / "report" / "table2.csv")
    assert "Scaled Pre-LN" in set(table2.astype(str).values.ravel())
    index = (tmp_path / "report" / "index.md").read_text()
    assert "at-init figure" not in index  # the user's block was loaded again for the figure, no warning

    code, out, err = cli(
        "bench",
        "--arch",
        "tiny",
        "--blocks",
        f"{block_file}:Scaled",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--out",
        str(tmp_path / "bench"),
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert [r["title"] for r in rows] == ["Pre-LN", "Scaled Pre-LN"]
    assert "| Scaled Pre-LN |" in (tmp_path / "bench" / "bench.md").read_text()


def test_changing_the_block_file_after_pretraining_is_refused(user_run, block_file, smoke_cache, tmp_path):
    original = block_file.read_text()
    try:
        block_file.write_text(original.replace("0.5 * self.mlp", "0.25 * self.mlp"))
        for argv in (
            ["glue", str(user_run), "--protocol", "smoke", "--tasks", "rte", "--data-dir", str(tmp_path)],
            pretrain_args(smoke_cache, user_run.parent, "--resume", block=f"{block_file}:Scaled"),
            ["report", str(user_run), "--out", str(tmp_path / "report")],
        ):
            code, _, err = cli(*argv)
            assert code == 2, (argv[0], err)
            assert "changed since pretraining" in err and len(err.strip().splitlines()) == 1, err
        # the file gone altogether (the model copied to another machine): the embedded source, proven by its hash
        block_file.unlink()
        model = load_model(user_run / "model")
        assert model.encoder.spec.source_text == original and model.encoder.spec.title == "Scaled Pre-LN"
    finally:
        block_file.write_text(original)
    assert isinstance(load_model(user_run / "model"), torch.nn.Module)


# ReZero's pretraining is slow-marked (the same path as RMSNorm's; its identity at init is tested just below)
@pytest.mark.parametrize("ref", [pytest.param("rezero.py:ReZero", marks=pytest.mark.slow), "rmsnorm.py:PreRMSNorm"])
def test_the_examples_pretrain_on_the_smoke_budget(ref, smoke_cache, tmp_path):
    code, _, err = cli(*pretrain_args(smoke_cache, tmp_path, "hours=0.002", block=f"{EXAMPLES / ref}"))
    assert code == 0, err
    (run,) = tmp_path.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    held_out = [m["eval_loss"] for m in metrics if m.get("kind") == "eval"]  # at the start and at the end
    assert summary["completed"] and summary["block_title"] == block_spec(str(EXAMPLES / ref)).title
    # it learns: the budget is wall-clock, so a slow machine takes fewer steps (21 on a loaded 2-core CI, 0.26 down)
    assert len(held_out) >= 2 and held_out[-1] < held_out[0] - 0.15 and min(held_out) == held_out[-1], held_out


def test_the_rezero_example_is_the_identity_at_init():
    model = MaskedLM(TINY, f"{EXAMPLES}/rezero.py:ReZero")
    x = torch.randn(2, 8, TINY.width)
    assert torch.equal(model.encoder.layers[0](x, None), x)


# ----------------------------------------------------------------------------------------------- check-block


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


def test_replicates_compare_a_user_blocks_source_but_not_a_builtins_record():
    from cramming_simple.report.load import experiment_key

    old = {"block": "sas", "train": {"lr": 3e-3, "seed": 0}}  # a run from before blocks were recorded
    new = {**old, "block_source": None, "train": {"lr": 3e-3, "seed": 1}}  # as config.yaml records a built-in
    assert experiment_key(old, {"block": "sas"}) == experiment_key(new, {"block": "sas"})
    mine = {"block": "/x/b.py:B", "block_source": {"kind": "file", "path": "/x/b.py", "class": "B", "sha256": "a" * 64}}
    edited = {**mine, "block_source": {**mine["block_source"], "sha256": "b" * 64}}
    assert experiment_key(mine, {"block": "/x/b.py:B"}) != experiment_key(edited, {"block": "/x/b.py:B"})
