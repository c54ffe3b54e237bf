"""Progress a person can follow: a tqdm bar on a terminal, a log line at intervals in a log file; timers."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any, Iterator

from tqdm import tqdm

from ..console import LOG


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
