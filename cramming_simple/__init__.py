"""cramming-simple: compare Transformer block designs on a fixed compute budget (crammed BERT + GLUE)."""

__version__ = "0.1.0"
