"""cramming_simple/runtime/progress.py: progress bars never write carriage returns into a log."""

from __future__ import annotations

import subprocess
import sys


def command(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cramming_simple", *args], capture_output=True, text=True, timeout=timeout
    )


def test_progress_never_writes_carriage_returns_into_a_log(tmp_path):
    runs = tmp_path / "runs"
    cache = tmp_path / "cache"  # a fresh preparation: its bar too
    done = command(
        "pretrain", "--block", "preln", "--budget", "smoke", "--runs-dir", str(runs), f"data.cache_dir={cache}",
        "impl.device=cpu", "hours=0.0004", "data.max_documents=600", "impl.log_seconds=0.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr
    assert "[preparing builtin data]" in done.stdout and "[pretrain preln]" in done.stdout
