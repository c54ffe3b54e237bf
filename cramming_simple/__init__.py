"""cramming-simple: compare Transformer block designs on a fixed compute budget (crammed BERT + GLUE)."""

from . import autoregister

# Importing the package configures nothing of the process (no environment variables, logging handlers or
# progress switches: a notebook keeps its own); the command line does that for itself (console.setup_logging).

autoregister.install()  # transformers loads saved folders with the package's classes (autoregister.py)

__version__ = "0.1.0"
