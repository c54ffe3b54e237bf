"""The house a newcomer walks: layers point down, and the shipped presets are found however the tool is run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers.imports import imports, module_name

import cramming_simple
from cramming_simple.presets import find_preset, list_presets, shipped
from cramming_simple.train.config import PretrainConfig

PACKAGE = Path(cramming_simple.__file__).parent
DOMAIN = ("model", "folders", "data", "train", "glue", "report", "bench", "check", "hub", "sweep")
BOTTOM = (
    "config",
    "console",
    "errors",
    "runtime",
    "presets",
    "runs",
    "reference",
    "hardware",
    "markdown",
    "optim",
    "tracking",
)


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_point_down(path):
    layer, used = layer_of(module_name(path)), imports(path)
    upward = {name for name in used if layer_of(name) in ("commands", "cli", "__main__")}
    if layer in DOMAIN or layer in BOTTOM:
        assert not upward, f"{path.name} ({layer}) imports the commands layer: {sorted(upward)}"
        tree = ast.parse(path.read_text())  # nor is it a command itself: argument parsing lives in commands/
        assert "argparse" not in {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}, path
        assert "add_arguments" not in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, path
    if layer == "model":
        sideways = {name for name in used if layer_of(name) in ("train", "glue", "data", "report", "bench")}
        assert not sideways, f"model/{path.name} imports {sorted(sideways)}"
    if layer in BOTTOM:
        domain = {name for name in used if layer_of(name) in DOMAIN}
        assert not domain, f"{path.name} is a bottom layer but imports {sorted(domain)}"


DOMAIN = ["data", "model", "train", "glue", "report", "folders", "bench", "check", "hub", "sweep"]


@pytest.mark.parametrize("package", DOMAIN)
def test_each_domain_package_says_what_it_owns_takes_and_gives_in_two_lines(package):
    doc = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert doc is not None and len(doc.splitlines()) == 2, doc
    assert "Takes" in doc.splitlines()[1] and "gives" in doc.splitlines()[1]
    design = (PACKAGE.parent / "docs" / "design.md").read_text()
    the_map = design[design.index("## The map") : design.index("## Layers point down")]
    assert f"{package}/" in the_map  # and docs/design.md's map places it


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    assert "cramming_simple.train.config" in imports(PACKAGE / "commands" / "data.py")
    assert "cramming_simple.model" in imports(PACKAGE / "train" / "loop.py")


def test_shipped_presets_are_found_and_a_local_file_takes_precedence(tmp_path, monkeypatch, capsys):
    assert {"24h", "1h", "smoke"} <= set(list_presets("budgets")) and (
        shipped("reference") / "he2023_table1.csv"
    ).exists()
    monkeypatch.chdir(tmp_path)  # elsewhere: the shipped presets are still found, silently
    assert find_preset("budgets", "smoke") == shipped("budgets") / "smoke.yaml" and capsys.readouterr().err == ""
    (tmp_path / "budgets").mkdir()
    smoke = (shipped("budgets") / "smoke.yaml").read_text()
    (tmp_path / "budgets" / "smoke.yaml").write_text(smoke.replace("\nhours:", "\nhours: 0.5 #"))
    assert PretrainConfig.from_budget("smoke", "preln").hours == 0.5
    assert f"using {tmp_path / 'budgets' / 'smoke.yaml'}" in capsys.readouterr().err
    mine = tmp_path / "my-budget.yaml"
    mine.write_text(smoke.replace("\nhours:", "\nhours: 0.25 #"))
    cfg = PretrainConfig.from_budget(str(mine), "sas")
    assert cfg.hours == 0.25 and cfg.name == "sas-my-budget"
