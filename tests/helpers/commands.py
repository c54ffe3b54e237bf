"""The command line, called in-process with its output captured."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

from cramming_simple.cli import main


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def cli_process(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cramming_simple", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


QUICK_GLUE = ["epochs=1", "max_train_examples=16", "max_eval_examples=8"]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]
