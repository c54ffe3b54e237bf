"""How things run, kept out of the models: device, precision, compile, seeds, files, progress, environment.

torchtitan-style: a model is built plain, then execution concerns are applied to it here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import random
import re
import secrets
import shutil
import signal
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from .console import LOG
from .errors import ConfigError, CorruptFileError, DiskFullError, LockedError, is_disk_full

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
FILE_MODE = 0o644  # files the harness writes: readable by everyone, whatever the umask of a temporary file


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> the local CUDA device when there is one (LOCAL_RANK under torchrun), else CPU. A CPU run also
    keeps freed memory for reuse (`keep_freed_memory`): every run path picks its device here."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        keep_freed_memory()
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "impl.device=cuda, but torch sees no CUDA device here (a CPU build of torch, or no GPU): use "
                "impl.device=auto or cpu"
            )
        index = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (x86 AVX-512 BF16 or AMX, Arm BF16); without it bf16
    is emulated and slower than fp32. Asked of torch's own CPU feature checks."""
    cpu = torch.cpu
    for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        if getattr(cpu, check, lambda: False)():
            return True
    if platform.machine() in ("aarch64", "arm64"):
        with contextlib.suppress(OSError):
            features = Path("/proc/cpuinfo").read_text()
            return any(line.startswith("Features") and " bf16" in line for line in features.splitlines())
    return False


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype; None means no autocast. 'auto' is bf16 on CUDA and on CPUs with native bf16
    (`cpu_has_bf16`), full fp32 on other CPUs."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """How results name an autocast dtype: bf16, fp16 or fp32 (no autocast)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of giving it back to the kernel (CPU runs).

    A CPU training step frees and re-allocates the same large tensors every step. By default glibc serves each
    one (> 32 MiB at most) with a fresh mmap and unmaps it when freed, so every step page-faults its whole
    working set again: measured on a 2-core CPU, a crammed-bert step at batch 8 spent 0.4 s of 1.5 s in the
    kernel (227k page faults per step); with this, none, and the step was 22 % faster. The price: the
    process's resident memory stays at its peak. Returns whether it applied (glibc only); idempotent.
    """
    if sys.platform != "linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def compile_default(device: str | torch.device) -> bool:
    """Whether to compile when not told: on for CUDA (where inductor pays off), off for CPU."""
    kind = device.type if isinstance(device, torch.device) else device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return kind == "cuda"


# Inductor options on CPU. No pattern matcher: it rewrites the CPU attention path (`model.layers.attend`: two
# batched matmuls around a softmax) back into SDPA, whose CPU kernel is 2-5x slower in bf16. Measured on a 2-core
# CPU, bf16, batch 8 x 128: a Pre-LN crammed-bert step 1.14 s with it, 0.90 s without; SAS-P 0.78 s either way.
CPU_COMPILE_OPTIONS = {"pattern_matcher": False}


def compile_model(model: torch.nn.Module, enabled: bool, **kwargs: Any) -> tuple[torch.nn.Module, bool]:
    """torch.compile when enabled; if wrapping fails, warn and return the eager model. (The first call can
    still fail: `CompiledModule` handles that.)"""
    if not enabled:
        return model, False
    if any(p.device.type == "cpu" for p in model.parameters()):
        kwargs.setdefault("options", CPU_COMPILE_OPTIONS)
    try:
        return torch.compile(model, **kwargs), True
    except Exception as err:  # noqa: BLE001 - any compile failure means: run eager
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); running eager", stacklevel=2)
        return model, False


class CompiledModule:
    """A module under torch.compile that falls back to eager once, if compiling fails: when wrapping, or at the
    first call, where inductor really compiles forward and backward. Every user of compile goes through it."""

    def __init__(
        self, eager: torch.nn.Module, enabled: bool, name: str = "model", reset: Callable[[], None] | None = None
    ):
        """`reset`: called after a failed first call, before the eager retry (e.g. drop half-made gradients)."""
        self.eager, self.name, self.reset = eager, name, reset
        self.module, self.compiled = compile_model(eager, enabled)
        self.unproven = self.compiled  # the first call has yet to show that the compiled module runs

    def run(self, step: Callable[..., Any], *args: Any) -> Any:
        """`step(module, *args)` with the module that runs (no closure per call: this is the training step's
        path). If the first call of the compiled module fails: warn, reset, and do the step eagerly from then on."""
        if not self.unproven:
            return step(self.module, *args)
        try:
            return step(self.module, *args)
        except Exception as err:  # noqa: BLE001 - any compile failure means: run eager
            warnings.warn(
                f"{self.name}: torch.compile failed at the first step ({type(err).__name__}: {str(err)[:300]}); "
                "running eager",
                stacklevel=2,
            )
            self.module, self.compiled = self.eager, False
            if self.reset is not None:
                self.reset()
            return step(self.module, *args)
        finally:
            self.unproven = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------- files


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
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


# Names of what killed writers leave behind: `.<name>.<pid>[-<hex>].tmp` (atomic writes, checkpoint links, model
# folders, GLUE predictions), `.<name>.<pid>.old` (a model folder being replaced), `<key>.partial<pid>` (data).
TEMPORARY = re.compile(r"^\..+\.(\d+)(-[0-9a-f]+)?\.(tmp|old)$|^.+\.partial(\d+)$")


def remove_stale_temporaries(folder: str | Path, recursive: bool = False, dead_only: bool = False) -> list[Path]:
    """Delete the temporary files and folders that killed writers left in `folder` (`recursive`: below it too).

    Call it holding the folder's lock, or with `dead_only`: then only what a process of this host that no longer
    runs was writing goes (the writer's PID is in the name), so a folder other live processes write in is safe.
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
        pid = int(match.group(1) or match.group(4))
        if dead_only and (pid == os.getpid() or pid_alive(pid)):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            stale.append(p)
    return stale


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------- environment


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    """What a result was measured on: recorded in every summary, shown in every report."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_bf16": cpu_has_bf16(),  # what precision=auto means on a CPU
    }


# ----------------------------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal; when stdout is not a terminal, a log line every `log_every` seconds (never a
    carriage return into a log file). Nothing at all with -q, or with `enabled=False`.

    `update(position, **stats)` sets the absolute position (steps done, seconds spent, ...); with unit "s"
    the position and total read as h:mm:ss (a budget). `total=None`: no end known (a streamed corpus).
    """

    def __init__(
        self, total: float | None, desc: str, unit: str = "it", log_every: float = 30.0, file=None, enabled=True
    ):
        self.file = file or sys.stdout
        self.total, self.desc, self.unit, self.log_every = total, desc, unit, log_every
        self.interactive = hasattr(self.file, "isatty") and self.file.isatty()
        self.quiet = not enabled or not LOG.isEnabledFor(logging.INFO)  # -q: no progress either
        self.bar = None
        if self.interactive and not self.quiet:
            # our text after the bar: position and stats
            fmt = "{desc}: {percentage:3.0f}%|{bar}| {postfix[0]}" if total else "{desc}: {postfix[0]}"
            self.bar = tqdm(total=total, desc=desc, file=self.file, dynamic_ncols=True, bar_format=fmt, postfix=[""])
        self.last_log = -float("inf")
        self.position = 0.0

    def where(self) -> str:
        if self.unit == "s":
            return f"{tqdm.format_interval(self.position)}/{tqdm.format_interval(self.total or 0)}"
        if not self.total:
            return f"{self.position:.0f} {self.unit}"
        return f"{self.position:.0f}/{self.total:.0f} {self.unit}"

    def update(self, position: float, **stats: Any) -> None:
        self.position = position
        if self.bar is not None:
            self.bar.n = min(position, self.total) if self.total else position
            self.bar.postfix = [" ".join([self.where(), *(f"{k} {_fmt(v)}" for k, v in stats.items())])]
            self.bar.refresh()
        elif time.monotonic() - self.last_log >= self.log_every:
            self.log(**stats)

    def log(self, **stats: Any) -> None:
        self.last_log = time.monotonic()
        if self.quiet:
            return
        share = f"{100.0 * self.position / self.total:5.1f}% " if self.total else ""
        fields = " ".join(f"{k} {_fmt(v)}" for k, v in stats.items())
        print(f"[{self.desc}] {share}{self.where()} {fields}".rstrip(), file=self.file, flush=True)

    def close(self, **stats: Any) -> None:
        if self.bar is not None:
            if stats:
                self.update(self.position, **stats)
            self.bar.close()
        else:
            self.log(**stats)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextlib.contextmanager
def timed() -> Iterator[dict]:
    """`with timed() as t: ...` then t['s'] holds the seconds spent."""
    out: dict = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - start
