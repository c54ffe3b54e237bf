"""Checkpoints written atomically: a temporary file beside the old one, fsynced, then renamed over it.

A process killed at any moment leaves either the previous complete checkpoint or the new complete one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: the old checkpoint stays until this instant


def load_checkpoint(path: str | Path) -> dict:
    # Our own file: it holds RNG states (numpy, python) besides tensors, so not weights_only.
    return torch.load(Path(path), map_location="cpu", weights_only=False)
