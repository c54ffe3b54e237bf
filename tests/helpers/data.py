"""Inputs for the data tests."""

from __future__ import annotations

SPECIALS = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask in our trained tokenizers
