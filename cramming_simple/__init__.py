"""cramming-simple: compare Transformer block designs on a fixed compute budget (crammed BERT + GLUE)."""

from . import autoregister, console  # noqa: F401 - console: the library's log records reach the console

autoregister.install()  # transformers loads saved folders with the package's classes (autoregister.py)

__version__ = "0.1.0"
