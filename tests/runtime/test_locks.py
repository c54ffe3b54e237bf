"""cramming_simple/runtime/locks.py: run locks name their holder, and filesystems whose locks are node-local are
named."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import hold_lock, pretrain_args
from helpers.commands import cli_process
from helpers.runs import metrics, run_cli, wait_for

from cramming_simple.cli import main
from cramming_simple.errors import LockedError
from cramming_simple.runtime import (
    FileLock,
)
from cramming_simple.train.checkpoint import load_checkpoint

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
10.0.0.1@o2ib:/scratch /scratch lustre rw,localflock,lazystatfs 0 0
10.0.0.1@o2ib:/proj /proj lustre rw,noflock 0 0
10.0.0.1@o2ib:/work /work lustre rw,flock 0 0
nfs1:/home /home nfs4 rw,vers=4.2,local_lock=none 0 0
nfs2:/data /data nfs rw,vers=3,nolock 0 0
nfs2:/old /old nfs rw,vers=3,local_lock=flock 0 0
beegfs_nodev /beegfs beegfs rw,cfgFile=/etc/beegfs/beegfs-client.conf 0 0
"""


@pytest.mark.parametrize(
    "folder, said",
    [
        ("/scratch/me/runs/sas-24h", "lustre at /scratch, mounted with localflock"),
        ("/proj/runs", "lustre at /proj, mounted with noflock"),
        ("/work/runs", None),  # Lustre with flock: cluster-wide
        ("/home/me/runs", None),  # NFSv4: its locks are the server's
        ("/data/runs", "nfs at /data, mounted with nolock"),
        ("/old/runs", "nfs at /old, mounted with local_lock=flock"),
        ("/beegfs/runs", "beegfs at /beegfs (BeeGFS locks are node-local"),
        ("/scratchy/runs", None),  # not under /scratch: the root's ext4
    ],
)
def test_filesystems_whose_locks_are_node_local_are_named(folder, said):
    from cramming_simple.runtime import node_local_locks

    found = node_local_locks(folder, MOUNTS)
    assert found == said if said is None else said in found


def test_a_run_folder_with_node_local_locks_is_refused_in_one_line_and_runs_with_impl_lock_none(
    smoke_cache, tmp_path, capsys, monkeypatch
):
    from conftest import pretrain_args

    from cramming_simple.train import folder

    here = node_local = "lustre at /scratch, mounted with localflock"
    monkeypatch.setattr(folder, "node_local_locks", lambda run_dir: here)  # this machine has no Lustre
    args = pretrain_args(smoke_cache, tmp_path, "hours=0.0004")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and node_local in err[0] and "impl.lock=none" in err[0], err
    assert main([*args, "impl.lock=none"]) == 0
    assert "nothing but the scheduler keeps a second process out" in capsys.readouterr().err
    assert not (tmp_path / "preln-smoke" / ".lock").exists()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def test_a_second_pretrain_on_a_busy_folder_exits_2_naming_the_holder(smoke_cache, tmp_path):
    args = pretrain_args(smoke_cache, tmp_path, "hours=1", "impl.log_seconds=0.3")
    run = tmp_path / "preln-smoke"
    first = run_cli(args)
    wait_for(run / "metrics.jsonl", first)
    started = time.monotonic()
    second = cli_process(*args, "--resume")  # a double-started `make pretrain` (which always passes --resume)
    assert second.returncode == 2 and time.monotonic() - started < 10, second.stderr
    assert "Traceback" not in second.stderr
    (line,) = error_lines(second.stderr)
    assert f"PID {first.pid}" in line and str(run) in line
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 4, out
    steps = [r["microbatch_steps"] for r in metrics(run)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one writer: rows not interleaved
    summary = json.loads((run / "summary.json").read_text())
    assert summary["microbatch_steps"] == load_checkpoint(run / "checkpoint.pt")["state"]["microbatch_steps"]
    # the lock went with the process: the run resumes now
    assert FileLock(run / ".lock", "run", "test").acquire().release() is None


def test_a_lock_names_its_holder_and_is_free_once_the_holder_dies(tmp_path):
    path = tmp_path / "folder" / ".lock"
    holder = hold_lock(path, "test holder")
    with pytest.raises(LockedError, match=f"in use by PID {holder.pid} \\(test holder\\)"):
        FileLock(path, "the folder", "me").acquire()
    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
    holder.wait()
    with FileLock(path, "the folder", "me"):
        assert path.read_text().split()[0] == str(os.getpid())
