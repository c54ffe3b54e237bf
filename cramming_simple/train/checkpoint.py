"""Checkpoints: written atomically, the previous one kept, and checked when read back.

Writing: the new checkpoint goes to a uniquely named temporary file, is fsynced and renamed over
`checkpoint.pt` (see `runtime.atomic_write`). Just before, the checkpoint it replaces becomes
`checkpoint.prev.pt`: a hard link to it is renamed onto that name, so at every instant `checkpoint.pt` is a
complete checkpoint and `checkpoint.prev.pt` the one before it, and the disk never holds more than two.

Reading: torch.load does not check the zip container's CRCs (a flipped bit loads silently as a wrong
weight), so `load_checkpoint` checks them first; any damage raises `UnreadableCheckpoint` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptFileError
from ..runtime import atomic_write


class UnreadableCheckpoint(CorruptFileError):
    """A checkpoint that is truncated, damaged, or does not fit the run."""


def state_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state: about the size the checkpoint file will have."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: str | Path, state: dict, previous: str | Path | None = None) -> None:
    """Write `state` to `path` atomically; the checkpoint it replaces becomes `previous` (when given).

    Pass `previous=None` when the current file is known to be damaged: the good previous one then stays.
    """
    path = Path(path)
    if previous is not None and path.exists():
        prev = Path(previous)
        link = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        try:
            os.link(path, link)
            os.replace(link, prev)  # prev and current are now one file; the older prev is gone
        except OSError:  # a file system without hard links: rename instead (current is absent until the write ends)
            with contextlib.suppress(OSError):
                os.unlink(link)
            os.replace(path, prev)
    atomic_write(path, lambda f: torch.save(state, f), size_hint=state_bytes(state))


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint after checking its container; `UnreadableCheckpoint` says what is wrong with it."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every member and checks its CRC
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise UnreadableCheckpoint(path, f"not a complete checkpoint, probably truncated ({err})") from None
    if damaged is not None:
        raise UnreadableCheckpoint(path, f"damaged: CRC mismatch in {damaged}")
    try:
        # Our own file: it holds RNG states (numpy, python) besides tensors, so not weights_only.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - whatever torch.load trips on, the file is not usable
        raise UnreadableCheckpoint(
            path, f"cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
        ) from None
