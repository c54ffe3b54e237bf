"""One process per folder: `flock` locks that die with their holder, and processes that die with their parent."""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import signal
import sys
import time
from pathlib import Path

from ..errors import LockedError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True


class FileLock:
    """An exclusive `flock` on a lock file, for the life of a process's work on a folder.

    The kernel drops the lock when the holder dies, however it dies, so there is never a stale lock to clean
    up; the file keeps the holder's PID for the message the next process prints. Lock files are never
    deleted (deleting one while another process waits on it would let two processes hold "the" lock).
    """

    def __init__(self, path: str | Path, what: str, purpose: str, advice: str = "wait for it to finish, or stop it"):
        self.path, self.what, self.purpose, self.advice = Path(path), what, purpose, advice
        self.fd: int | None = None

    def acquire(self) -> FileLock:
        if fcntl is None:  # pragma: no cover - no flock on this platform: no protection, but no failure either
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = self._holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LockedError(f"{self.what} is in use by {holder}: {self.advice}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {platform.node()} {self.purpose}\n".encode())
        self.fd = fd
        return self

    def _holder(self, fd: int) -> str:
        for _ in range(20):  # the holder writes its PID right after locking: give it a moment
            text = os.pread(fd, 4096, 0).decode(errors="replace").split()
            if text:
                pid, host, *command = text
                where = "" if host == platform.node() else f" on {host}"
                return f"PID {pid}{where}" + (f" ({' '.join(command)})" if command else "")
            time.sleep(0.05)
        return "another process (PID unknown)"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def die_with_parent(sig: int = signal.SIGKILL, parent_pid: int | None = None) -> bool:
    """Have Linux send `sig` to this process when its parent dies (prctl PR_SET_PDEATHSIG); False elsewhere.

    `parent_pid`: the parent that started us; if it already died before this call, `sig` is sent at once.
    """
    if sys.platform != "linux":
        return False
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)
    return True
