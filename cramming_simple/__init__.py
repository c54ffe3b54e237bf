"""cramming-simple: compare Transformer block designs on a fixed compute budget (crammed BERT + GLUE)."""

from . import console  # noqa: F401 - the library's log records reach the console (console.py)

__version__ = "0.1.0"
