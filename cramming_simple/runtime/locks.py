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

from ..errors import LockedError, LockUnsupported

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
            if err.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL):
                os.close(fd)
                raise LockUnsupported(
                    f"cannot lock {self.path}: its filesystem refuses flock ({err.strerror}); README, On a cluster, "
                    "Shared filesystems: impl.lock=none for pretraining under a sweep, or a folder elsewhere"
                ) from None
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


def mount_of(path: Path, mounts: str) -> tuple[str, str, list[str]] | None:
    """(mount point, filesystem type, options) of the mount that holds `path`, from /proc/self/mounts' text."""
    best = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, fields[2], fields[3].split(","))
    return best


def node_local_locks(folder: str | Path, mounts: str | None = None) -> str | None:
    """Why `flock` in `folder` would not exclude processes on other nodes, or None: a filesystem mounted with
    node-local locks (Lustre `localflock`, NFS `nolock` or `local_lock=flock|all`) or none (Lustre `noflock`),
    or BeeGFS (node-local unless its client sets tuneUseGlobalFileLocks). Read from /proc/self/mounts."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:  # not Linux: nothing to read, nothing to say
            return None
    found = mount_of(Path(os.path.realpath(folder)), mounts)
    if found is None:
        return None
    point, kind, options = found
    where = f"{kind} at {point}"
    if kind == "lustre" and ("localflock" in options or "noflock" in options):
        return f"{where}, mounted with {'localflock' if 'localflock' in options else 'noflock'}"
    if kind.startswith("nfs") and ("nolock" in options or "local_lock=flock" in options or "local_lock=all" in options):
        return (
            f"{where}, mounted with {next(o for o in options if o in ('nolock', 'local_lock=flock', 'local_lock=all'))}"
        )
    if kind == "beegfs" and not beegfs_global_locks():
        return f"{where} (BeeGFS locks are node-local unless its client sets tuneUseGlobalFileLocks=true)"
    return None


def beegfs_global_locks(conf: Path = Path("/etc/beegfs/beegfs-client.conf")) -> bool:
    try:
        lines = conf.read_text().splitlines()
    except OSError:
        return False
    settings = dict(line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return settings.get("tuneUseGlobalFileLocks", "").strip().lower() == "true"


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
