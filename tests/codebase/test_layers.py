"""The package's layers: every import points down, each domain package says what it owns, the model package holds the
model."""

from __future__ import annotations

import ast

import pytest
from helpers.imports import PACKAGE, imports, module_name


def test_the_model_package_holds_the_model_and_the_folder_machinery_lives_beside_it():
    from helpers.imports import imports

    model_files = sorted((PACKAGE / "model").glob("*.py"))
    assert {p.name for p in model_files} >= {"config.py", "layers.py", "blocks.py", "bert.py"}
    assert not {p.name for p in model_files} & {"io.py", "remote.py"}
    for path in model_files:  # the model never reaches up into how it travels
        assert not {n for n in imports(path) if n.startswith("cramming_simple.folders")}, path.name


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
