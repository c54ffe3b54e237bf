"""cramming_simple/train/metrics.py: a metrics row on a full disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from cramming_simple.errors import DiskFullError
from cramming_simple.runtime import append_jsonl


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_metrics_row_on_a_full_disk_raises_disk_full():
    with pytest.raises(DiskFullError, match="/dev/full"):
        append_jsonl("/dev/full", {"loss": 1.0})
