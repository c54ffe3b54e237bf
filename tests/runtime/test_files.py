"""cramming_simple/runtime/files.py: atomic writes and the cleanup of temporaries, by host and process."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys

import pytest

from cramming_simple.errors import DiskFullError
from cramming_simple.runtime import (
    atomic_write,
    atomic_write_bytes,
    remove_stale_temporaries,
    write_temporary,
    writer_tag,
)
from cramming_simple.runtime.files import HOST


def test_a_temporary_of_another_hosts_writer_survives_cleanup(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that ran and ended: on this host, its temporaries are stale
    tmp = write_temporary(tmp_path / "result.json", lambda f: f.write(b"{}"))
    assert re.fullmatch(rf"\.result\.json\.{os.getpid()}-[0-9a-f]{{6}}@{re.escape(HOST)}\.tmp", tmp.name), tmp.name
    assert writer_tag() == f"{os.getpid()}@{HOST}"
    mine_dead = tmp_path / f".seed1.json.{pid}-0a1b2c@{HOST}.tmp"
    legacy_dead = tmp_path / f".seed2.json.{pid}-0a1b2c.tmp"  # before hosts were named: this host's
    other = tmp_path / f".seed3.json.{pid}-0a1b2c@gpu-node07.cluster.local.tmp"  # that PID means nothing here
    other_partial = tmp_path / f"0123abcd.partial{pid}@gpu-node07"
    mine_partial = tmp_path / f"4567abcd.partial{pid}@{HOST}"
    for path in (mine_dead, legacy_dead, other, other_partial, mine_partial):
        path.write_bytes(b"half")
    removed = remove_stale_temporaries(tmp_path, dead_only=True)
    assert sorted(removed) == sorted([mine_dead, legacy_dead, mine_partial])
    assert tmp.exists() and other.exists() and other_partial.exists()  # a live writer's, another node's
    assert set(remove_stale_temporaries(tmp_path)) == {tmp, other, other_partial}  # holding the folder's lock: all


def test_atomic_write_on_a_full_disk_removes_its_temporary_file_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write_bytes(path, b"the previous checkpoint")

    def write(f):
        f.write(b"half of the new one")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"disk full writing .*checkpoint.pt: it needs about 12.0 MB") as err:
        atomic_write(path, write, size_hint=12 * 2**20)
    assert err.value.exit_code == 5
    assert path.read_bytes() == b"the previous checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt"
    ]
