"""Checkpoints: written atomically, the previous one kept, and checked when read back.

Writing: the new checkpoint goes to a uniquely named temporary file and is fsynced. Only then does the
checkpoint it replaces become `checkpoint.prev.pt` (a hard link to it renamed onto that name) and the new file
is renamed over `checkpoint.pt`: at every instant `checkpoint.pt` is a complete checkpoint, a kill while writing
leaves the two generations as they were, and the disk never holds more than two besides the one being written.

Reading: torch.load does not check the zip container's CRCs (a flipped bit loads silently as a wrong
weight), so `load_checkpoint` checks them first; any damage raises `UnreadableCheckpoint` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CorruptFileError
from ..runtime import commit_temporary, write_temporary


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


def save_checkpoint(
    path: str | Path,
    state: dict,
    previous: str | Path | None = None,
    before_commit: Callable[[], None] | None = None,
) -> None:
    """Write `state` to `path` atomically; the checkpoint it replaces becomes `previous` (when given).

    The new checkpoint is written completely (a temporary file, fsynced) before anything is renamed, so a kill
    while writing leaves both generations as they were. `before_commit` runs between the two (the run's summary:
    a summary that cannot be written, e.g. on a full disk, cancels the checkpoint, so the two never disagree).
    Pass `previous=None` when the current file is known to be damaged: the good previous one then stays.
    """
    path = Path(path)
    tmp = write_temporary(path, lambda f: torch.save(state, f), size_hint=state_bytes(state))
    try:
        if before_commit is not None:
            before_commit()
        if previous is not None and path.exists():
            prev = Path(previous)
            link = prev.with_name(f".{prev.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            try:
                os.link(path, link)
                os.replace(link, prev)  # prev and current are one file until the rename below, two syscalls later
            except OSError:  # a file system without hard links: rename (current is absent until the rename below)
                with contextlib.suppress(OSError):
                    os.unlink(link)
                os.replace(path, prev)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    commit_temporary(tmp, path)


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
