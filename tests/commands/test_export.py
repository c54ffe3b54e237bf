"""cramming_simple/commands/export.py: `export` and `glue` never ask to run remote code, even on a terminal."""

from __future__ import annotations

import os
import pty
import select
import sys
import time

from helpers.commands import QUICK_GLUE
from helpers.glue_data import copy_run


def in_a_terminal(args: list[str], timeout: float = 240) -> tuple[int, str]:
    """Run `python -m cramming_simple ARGS` under a pseudo-terminal (stdin, stdout and stderr a tty): its exit
    code and everything it printed. A prompt would wait for an answer until the timeout."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.execv(sys.executable, [sys.executable, "-m", "cramming_simple", *args])
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out += data
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_glue_and_export_never_ask_to_run_remote_code_on_a_terminal(pretrained_run, glue_parquet, tmp_path):
    run = copy_run(pretrained_run, tmp_path)
    glue = ["glue", str(run), "--protocol", "smoke", "--tasks", "rte", "--seeds", "1", "--data-dir", str(glue_parquet)]
    for args in ([*glue, *QUICK_GLUE], ["export", str(run), "--out", str(tmp_path / "export")]):
        started = time.monotonic()
        code, out = in_a_terminal(args)
        assert code == 0, out
        assert "[y/N]" not in out and "custom code" not in out and "model of type" not in out, out
        assert time.monotonic() - started < 120
    assert (run / "glue" / "rte" / "seed1.json").exists() and (tmp_path / "export" / "README.md").exists()
