"""House style the linter does not check: no parameter shadows a builtin."""

from __future__ import annotations

import ast

from helpers.imports import PACKAGE, package_files


def test_no_parameter_shadows_a_builtin():
    import builtins

    shadowing = []
    for path in package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                args = node.args
                for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                    if a.arg in ("compile", "input", "type", "id", "sum", "max", "min", "len", "list", "dict"):
                        shadowing.append(f"{path.relative_to(PACKAGE)}:{getattr(node, 'name', 'lambda')}({a.arg})")
    assert hasattr(builtins, "compile") and not shadowing, shadowing
