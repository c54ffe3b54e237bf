"""cramming_simple/hub/push.py: an unreachable hub fails in seconds with one line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time


def test_push_to_an_unreachable_hub_fails_in_seconds_with_one_line(block_runs, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_test"}  # port 9: nothing listens
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cramming_simple", "export", str(block_runs["sas"]), "--out", str(tmp_path / "e"),
         "--push-to-hub", "someone/crammed-sas"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 2 and elapsed < 10, (elapsed, proc.stderr)
    assert proc.stderr.strip().count("\n") == 0 and "cannot reach the Hugging Face hub at http://127.0.0.1:9" in (
        proc.stderr
    )
    assert not (tmp_path / "e").exists()  # checked before any work


def test_reachable_gives_up_at_its_deadline(monkeypatch):
    """A hub that never answers (a name lookup or connection that hangs) is given up at the deadline."""
    from cramming_simple.hub import push

    released = threading.Event()

    def hang(*args, **kwargs):  # until the test is over, then fails as a refused connection would
        released.wait(30)
        raise OSError("released")

    monkeypatch.setattr(push.urllib.request, "urlopen", hang)
    started = time.monotonic()
    assert push.reachable("https://hub.invalid", timeout=1.0) == "no answer within 1 s"
    assert time.monotonic() - started < 3
    released.set()
