"""Files a killed process cannot tear: atomic writes (temporary file, fsync, rename), JSON and JSON lines, the
temporaries killed writers leave behind, and a full disk turned into `DiskFullError`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from ..errors import CorruptFileError, DiskFullError, is_disk_full
from .locks import pid_alive

FILE_MODE = 0o644  # files the harness writes: readable by everyone, whatever the umask of a temporary file


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], size_hint: int | None = None) -> None:
    """Write `path` through `write(f)`: a uniquely named temporary file beside it, fsync, rename, fsync the folder.

    Readers (and a process killed at any moment) see the old file or the new one, never a torn one. Names are
    unique per process, so two writers never rename each other's file. On any failure the temporary file is
    removed; a full disk becomes `DiskFullError` (`size_hint`: the bytes the file needs, for the message).
    """
    commit_temporary(write_temporary(path, write, size_hint), path)


def write_temporary(path: str | Path, write: Callable[[BinaryIO], None], size_hint: int | None = None) -> Path:
    """The first half of `atomic_write`: the complete, fsynced temporary file beside `path` (not yet renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}@{HOST}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_disk_full(err):
            raise DiskFullError(path, size_hint) from None
        raise
    return tmp


def commit_temporary(tmp: Path, path: str | Path) -> None:
    """The second half: rename the temporary file over `path` and make the rename durable."""
    path = Path(path)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: str | Path) -> None:
    """Make renames in `folder` durable (a power cut after a rename must not bring the old name back)."""
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# Names of what killed writers leave behind: `.<name>.<pid>[-<hex>]@<host>.tmp` (atomic writes, checkpoint links,
# model folders, GLUE predictions), `.<name>.<pid>@<host>.old` (a model folder being replaced),
# `<key>.partial<pid>@<host>` (data). The host: run folders live on filesystems that several nodes share, and a PID
# says nothing about another node's processes. (Names without a host, from before, are this host's.)
HOST = re.sub(r"[^A-Za-z0-9.-]", "-", platform.node()) or "localhost"
TEMPORARY = re.compile(
    r"^\..+\.(\d+)(?:-[0-9a-f]+)?(?:@([A-Za-z0-9.-]+))?\.(?:tmp|old)$|^.+\.partial(\d+)(?:@([A-Za-z0-9.-]+))?$"
)


def writer_tag() -> str:
    """`<pid>@<host>`: whose temporary file this is (what `remove_stale_temporaries` reads back)."""
    return f"{os.getpid()}@{HOST}"


def remove_stale_temporaries(folder: str | Path, recursive: bool = False, dead_only: bool = False) -> list[Path]:
    """Delete the temporary files and folders that killed writers left in `folder` (`recursive`: below it too).

    Call it holding the folder's lock, or with `dead_only`: then only what a process of this host that no longer
    runs was writing goes (the writer's PID and host are in the name), so a folder other live processes write in,
    on this node or another, is safe.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    stale = []
    for p in list(found):
        match = TEMPORARY.match(p.name)
        if match is None:
            continue
        pid, host = int(match.group(1) or match.group(3)), match.group(2) or match.group(4) or HOST
        if dead_only and (host != HOST or pid == os.getpid() or pid_alive(pid)):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            stale.append(p)
    return stale


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), size_hint=len(data))


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 4 MiB chunks (shards and weights are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


def read_json(path: str | Path) -> Any:
    """A JSON file; a damaged one (truncated, not JSON, not UTF-8) raises `CorruptFileError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(path, f"not valid JSON ({err})") from None


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one JSON line. On a full disk the partial line is cut off again and `DiskFullError` raised."""
    line = (json.dumps(row, default=_jsonable) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.fstat(fd).st_size
        view = memoryview(line)
        while view:  # unbuffered: a short write is continued, a failed one is seen here, not at close
            view = view[os.write(fd, view) :]
    except OSError as err:
        if not is_disk_full(err):
            raise
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise DiskFullError(path, len(line)) from None
    finally:
        os.close(fd)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
