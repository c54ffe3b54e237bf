"""State with one owner: training components write only their own state, no module-level mutable state, and importing
the package changes nothing in the process."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers.imports import PACKAGE


def attribute_writes(path: Path) -> list[tuple[str, int, str]]:
    """(function, line, target) for every assignment to an attribute of `state`/`st` or of a config (`cfg.x.y`)."""
    writes = []
    for func in ast.walk(ast.parse(path.read_text())):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in (t for t in targets if isinstance(t, ast.Attribute)):
                for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                    root = element
                    while isinstance(root, ast.Attribute):
                        root = root.value
                    if isinstance(root, ast.Name) and root.id in ("state", "st", "cfg", "config"):
                        writes.append((func.name, node.lineno, ast.unparse(element)))
    return writes


def test_each_training_component_writes_only_its_own_state():
    """The trainer records what its components return (the evaluator's loss, the projection's steps, the data's
    pad id for the arch); only the clock's `stamp` writes the state's timers. The config is written only by its
    own constructors (config.py); everything else makes a new one (`dataclasses.replace`)."""
    others = {}
    for path in sorted((PACKAGE / "train").glob("*.py")):
        for func, line, target in attribute_writes(path):
            config = target.startswith(("cfg.", "config."))
            allowed = {"loop.py": not config, "state.py": not config, "config.py": config}.get(path.name, False)
            stamp = path.name == "clock.py" and func == "stamp" and not config
            if not (allowed or stamp):
                others[f"{path.name}:{line} {func}"] = target
    assert others == {}


MUTATORS = {"append", "add", "update", "setdefault", "pop", "clear", "remove", "insert", "extend", "discard", "popitem"}


def module_level_mutations(tree: ast.Module) -> list[str]:
    """Module-level containers that a function changes, and `global` statements: state that outlives a call."""
    containers = set()
    for node in tree.body:
        value = getattr(node, "value", None)
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)) or (
            isinstance(value, ast.Call) and getattr(value.func, "id", None) in ("dict", "list", "set")
        )
        if mutable:
            containers |= {t.id for t in targets if isinstance(t, ast.Name)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found += [f"global {name}" for name in node.names]
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            for target in getattr(node, "targets", None) or [node.target]:
                if isinstance(target, ast.Subscript) and getattr(target.value, "id", None) in containers:
                    found.append(f"{target.value.id}[...] changed")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            owner = node.func.value
            if getattr(owner, "id", None) in containers:
                found.append(f"{owner.id}.{node.func.attr}()")
            if ast.unparse(owner) == "sys.path":
                found.append(f"{ast.unparse(owner)}.{node.func.attr}()")
    return found


def test_no_module_level_mutable_state():
    """The block registry is an object (its loads and checks), the GLUE worker's state lives in the worker, and
    nothing changes sys.path for the whole process."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        problems = module_level_mutations(ast.parse(path.read_text()))
        if problems:
            found[str(path.relative_to(PACKAGE))] = problems
    assert found == {}


def test_the_state_walker_sees_a_cache_a_global_and_sys_path():
    source = "import sys\n_CACHE = {}\n_W = None\n"
    source += "def f(k, v):\n    global _W\n    _CACHE[k] = v\n    sys.path.insert(0, k)\n"
    assert module_level_mutations(ast.parse(source)) == ["global _W", "_CACHE[...] changed", "sys.path.insert()"]


IMPORT_CHECK = """
import logging, os
env, root = dict(os.environ), list(logging.getLogger().handlers)
ours = list(logging.getLogger("cramming_simple").handlers)
import cramming_simple
import cramming_simple.model.hf
assert dict(os.environ) == env, sorted(set(os.environ.items()) ^ set(env.items()))
assert logging.getLogger().handlers == root and logging.getLogger("cramming_simple").handlers == ours
assert logging.getLogger("cramming_simple").propagate
print("unchanged")
"""


def test_importing_the_package_leaves_the_environment_and_logging_alone():
    """In a fresh process whose stderr is not a terminal (a notebook's kernel, a job): the package used to set
    the hub's and datasets' progress switches and its own console handler on import."""
    done = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "unchanged", done.stderr[-2000:]
