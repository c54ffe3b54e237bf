"""cramming_simple/model/registry.py: a user's own block, registered by file, module or entry point; errors in one
line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import pretrain_args
from helpers.blocks import BLOCK_SOURCE, ROOT
from helpers.commands import cli
from helpers.models import TINY

from cramming_simple.model import ENTRY_POINT_GROUP, MaskedLM, block_spec
from cramming_simple.model.blocks import BLOCKS
from cramming_simple.train.config import PretrainConfig


def test_a_user_block_is_imported_on_its_own_into_a_registry_object(tmp_path):
    """Its folder is never on sys.path (not even while it imports), and two registries share nothing."""
    from cramming_simple.model.registry import BlockRegistry

    folder = tmp_path / "blocks"
    folder.mkdir()
    (folder / "mine.py").write_text(
        "import sys\nfrom torch import nn\nSEEN = list(sys.path)\n\n"
        "class Mine(nn.Module):\n    def __init__(self, cfg, layer):\n        super().__init__()\n\n"
        "    def forward(self, x, mask):\n        return x\n"
    )
    before = list(sys.path)
    one, two = BlockRegistry(), BlockRegistry()
    spec = one.spec(f"{folder / 'mine.py'}:Mine")
    assert str(folder) not in sys.modules[spec.build.__module__].SEEN and sys.path == before
    assert list(one.loaded) == [spec.ref] and two.loaded == {}
    assert one.spec(spec.ref) is spec  # loaded once per registry


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
