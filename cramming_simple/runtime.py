"""How things run, kept out of the models: device, precision, compile, seeds, files, progress, environment.

torchtitan-style: a model is built plain, then execution concerns are applied to it here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> the local CUDA device when there is one (LOCAL_RANK under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device (is this a CPU build of torch?)")
        index = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype: 'auto' is bf16 on CUDA and full fp32 on CPU; None means no autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def compile_model(model: torch.nn.Module, enabled: bool, **kwargs: Any) -> tuple[torch.nn.Module, bool]:
    """torch.compile when enabled; if compile itself fails, warn and return the eager model.

    Errors that only show at the first call are the caller's to catch (see `train.loop`), since the
    first forward and backward are where inductor really compiles.
    """
    if not enabled:
        return model, False
    try:
        return torch.compile(model, **kwargs), True
    except Exception as err:  # noqa: BLE001 - any compile failure means: run eager
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); running eager", stacklevel=2)
        return model, False


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    return json.loads(Path(path).read_text())


def append_jsonl(path: str | Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=_jsonable) + "\n")


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
    }


# ----------------------------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal; when stdout is not a terminal, a log line every `log_every` seconds.

    `update(position, **stats)` sets the absolute position (steps done, seconds spent, ...); with unit "s"
    the position and total read as h:mm:ss (a budget).
    """

    def __init__(self, total: float, desc: str, unit: str = "it", log_every: float = 30.0, file=None):
        self.file = file or sys.stdout
        self.total, self.desc, self.unit, self.log_every = total, desc, unit, log_every
        self.interactive = hasattr(self.file, "isatty") and self.file.isatty()
        self.bar = None
        if self.interactive:
            fmt = "{desc}: {percentage:3.0f}%|{bar}| {postfix[0]}"  # our text after the bar: position and stats
            self.bar = tqdm(total=total, desc=desc, file=self.file, dynamic_ncols=True, bar_format=fmt, postfix=[""])
        self.last_log = -float("inf")
        self.position = 0.0

    def where(self) -> str:
        if self.unit == "s":
            return f"{tqdm.format_interval(self.position)}/{tqdm.format_interval(self.total)}"
        return f"{self.position:.0f}/{self.total:.0f} {self.unit}"

    def update(self, position: float, **stats: Any) -> None:
        self.position = position
        if self.bar is not None:
            self.bar.n = min(position, self.total)
            self.bar.postfix = [" ".join([self.where(), *(f"{k} {_fmt(v)}" for k, v in stats.items())])]
            self.bar.refresh()
        elif time.monotonic() - self.last_log >= self.log_every:
            self.log(**stats)

    def log(self, **stats: Any) -> None:
        self.last_log = time.monotonic()
        share = 100.0 * self.position / self.total if self.total else 0.0
        fields = " ".join(f"{k} {_fmt(v)}" for k, v in stats.items())
        print(f"[{self.desc}] {share:5.1f}% {self.where()} {fields}".rstrip(), file=self.file, flush=True)

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
