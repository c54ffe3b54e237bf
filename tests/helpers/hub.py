"""Models in folders and the Python that loads them, for the Hugging Face tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

WITHOUT_HARNESS = 'import sys\nsys.modules["cramming_simple"] = None  # as on a machine without cramming-simple\n'


def python(script: str, tmp_path: Path, *args: str, harness: bool = False) -> dict:
    """Run a script in a fresh interpreter (HF module cache under tmp_path); its last stdout line is JSON."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    if not harness:  # the checkout must not be importable either (an installed copy is hidden by the line above)
        env.pop("PYTHONPATH", None)
    code = (WITHOUT_HARNESS if not harness else "") + textwrap.dedent(script)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
