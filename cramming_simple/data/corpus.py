"""The built-in offline corpus: docstrings of the Python standard library, read with `ast`, never imported.

Real English prose that every machine with Python has, so smoke runs and tests need no network. It is
deterministic for a given Python version (files in sorted order, docstrings in source order).
"""

from __future__ import annotations

import ast
import functools
import sysconfig
from pathlib import Path
from typing import Iterator

MIN_CHARS = 40  # skip one-liners such as "Return self." that teach nothing
SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(root).parts))


def docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_CHARS:
                yield doc


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    return tuple(doc for path in stdlib_files() for doc in docstrings(path))


def builtin_documents() -> Iterator[str]:
    """Every docstring of the standard library, one document each (parsed once per process: ~2 MB)."""
    return iter(_corpus())
