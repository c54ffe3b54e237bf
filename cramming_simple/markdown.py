"""Markdown tables, the one renderer the report and the bench share."""

from __future__ import annotations

from typing import Iterable, Sequence


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], left: Iterable[str] = ()) -> str:
    """A GitHub Markdown table. Columns named in `left` are left-aligned (text), the others right-aligned
    (numbers); a '|' inside a cell is escaped."""
    left = set(left)

    def line(cells: Iterable[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"

    lines = [line(columns), line("---" if c in left else "---:" for c in columns)]
    lines += [line(r) for r in rows]
    return "\n".join(lines) + "\n"
