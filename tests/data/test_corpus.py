"""cramming_simple/data/corpus.py: the built-in corpus."""

from __future__ import annotations

from cramming_simple.data.corpus import builtin_documents, docstrings, stdlib_files


def test_builtin_corpus_is_deterministic_and_substantial():
    first = list(builtin_documents())
    fresh = [doc for path in stdlib_files() for doc in docstrings(path)]  # a second, uncached parse
    assert first == fresh
    assert len(first) > 2000 and sum(map(len, first)) > 500_000  # the stdlib has megabytes of docstrings
    assert all(len(d) >= 40 for d in first)
    assert any("Return" in d for d in first)  # prose, not code
