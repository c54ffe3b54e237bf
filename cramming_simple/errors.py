"""User-facing errors and the exit codes they map to: the one path every mistake takes.

A `UserError` is something the user can fix (a typo, a bad file, a folder in use, a full disk). The console
command prints its message as one line on stderr and exits with its code; the traceback appears only with
`--debug` or `CRAMMING_SIMPLE_DEBUG=1`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

# Exit codes of every command (also in `cramming-simple --help` and the README).
EXIT_OK = 0
EXIT_FAILED = 1  # some work failed and the rest finished (e.g. a GLUE task/seed), or an unexpected error
EXIT_USER = 2  # a mistake to fix: config, data, damaged files, a run folder in use
EXIT_NONFINITE = 3  # pretraining stopped at a NaN/inf loss or gradient; the last good checkpoint is kept
EXIT_PREEMPTED = 4  # SIGTERM or Ctrl-C: a checkpoint was written, rerun with --resume
EXIT_DISK_FULL = 5  # no space left; the previous checkpoint is intact
EXIT_INTERRUPTED = 130  # a second Ctrl-C

# A pretraining run's exit code by its stop_reason (summary.json); the reasons themselves live in runs.py.
STOP_EXIT_CODES = {
    "budget": EXIT_OK,
    "max_steps": EXIT_OK,
    "max_microbatches": EXIT_OK,
    "nonfinite_loss": EXIT_NONFINITE,
    "preempted": EXIT_PREEMPTED,
    "disk_full": EXIT_DISK_FULL,
}

EXIT_CODES_HELP = """exit codes:
  0    done
  1    some work failed while the rest finished (e.g. a GLUE task/seed), or an unexpected error (a bug)
  2    a mistake to fix: config, data, damaged files, a run folder in use by another process
  3    pretraining stopped at a non-finite loss or gradient (the last good checkpoint is kept)
  4    preempted (SIGTERM or Ctrl-C): a checkpoint was written; rerun with --resume
  5    disk full: the previous checkpoint is intact; free space and rerun with --resume
  130  interrupted (second Ctrl-C)
errors print one line; --debug (or CRAMMING_SIMPLE_DEBUG=1) shows the traceback."""


class UserError(Exception):
    """A mistake the user can fix; the command prints the message as one line and exits with `exit_code`."""

    exit_code = EXIT_USER


class ConfigError(UserError, ValueError):
    """A config, an argument, or input data that does not fit what is expected."""


class CorruptFileError(UserError):
    """A file the harness wrote or reads that cannot be parsed (truncated, not JSON, bad header, ...)."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class LockedError(UserError):
    """A run folder (or GLUE task/seed) is in use by another live process."""


class LockUnsupported(UserError):
    """The filesystem refuses `flock` (Lustre mounted with noflock, some FUSE filesystems)."""


class DiskFullError(UserError):
    """No space left while writing `path`; whatever was being written has been removed."""

    exit_code = EXIT_DISK_FULL

    def __init__(self, path: str | Path, needed: int | None = None):
        self.path, self.needed = Path(path), needed
        free = free_bytes(self.path.parent)
        need = f"it needs about {human_bytes(needed)}, " if needed else ""
        super().__init__(
            f"disk full writing {path}: {need}{human_bytes(free)} free on that file system. "
            "Free space, then rerun with --resume (the previous checkpoint is intact)"
        )


def is_disk_full(err: BaseException | None) -> bool:
    """Whether `err`, or an error it arose from, is a full disk or quota. torch.save reports one as a
    RuntimeError whose context is the OSError, safetensors as a SafetensorError naming the OS error."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(
            text in str(err) for text in ("No space left on device", f"os error {errno.ENOSPC}", "Disk quota exceeded")
        ):
            return True
        err = err.__cause__ or err.__context__
    return False


def free_bytes(folder: str | Path) -> int | None:
    """Free bytes on the file system of `folder`, or of its nearest existing parent (the folder a failed write
    was creating may not exist)."""
    folder = Path(folder).absolute()
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def human_bytes(n: float | None) -> str:
    if n is None:
        return "? bytes"
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GB"


def debug_enabled() -> bool:
    return os.environ.get("CRAMMING_SIMPLE_DEBUG", "") not in ("", "0", "false", "no")
