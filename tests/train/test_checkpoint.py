"""cramming_simple/train/checkpoint.py: two generations, damaged checkpoints, a full disk, kills mid-write."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import pretrain_args
from helpers.commands import cli_process
from helpers.runs import metrics, run_cli, wait_for

from cramming_simple.train.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from cramming_simple.train.distributed import Dist
from cramming_simple.train.state import TrainState

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_checkpointer_restores_the_previous_generation_when_the_newest_is_damaged(tmp_path):
    def parts():
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    model, optimizer = parts()
    dist = Dist()
    writer = Checkpointer(tmp_path, dist, {"model": model, "optimizer": optimizer}, {"block": "preln"})
    for step in (4, 8):
        with torch.no_grad():
            model.weight.fill_(step)
        writer.save({**TrainState().__dict__, "microbatch_steps": step}, {"microbatch_steps": step})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"microbatch_steps": 8}
    assert writer.unchanged(8) and not writer.unchanged(9)
    (tmp_path / "checkpoint.pt").write_bytes(b"truncated")

    said = []
    model2, optimizer2 = parts()
    reader = Checkpointer(
        tmp_path, dist, {"model": model2, "optimizer": optimizer2}, {}, state_type=TrainState, warn=said.append
    )
    ckpt = reader.restore()
    assert isinstance(ckpt["state"], TrainState) and ckpt["state"].microbatch_steps == 4 and ckpt["block"] == "preln"
    assert torch.all(model2.weight == 4) and reader.saved_step == 4 and reader.exists
    assert not reader.keep_previous and "resumed from checkpoint.prev.pt" in said[0]  # the good prev stays
    assert Checkpointer(tmp_path / "empty", dist, {"model": model2}, {}).restore() is None


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one flipped byte in the middle of the tensor data: torch.load alone would not notice
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def preempted(smoke_cache, tmp_path_factory):
    """A run stopped by SIGTERM after at least two checkpoints: checkpoint.pt and checkpoint.prev.pt both exist."""
    runs = tmp_path_factory.mktemp("preempted")
    args = pretrain_args(
        smoke_cache, runs, "hours=1", "impl.checkpoint_minutes=0.01", "impl.log_seconds=0.3", block="sas"
    )
    proc = run_cli(args)
    wait_for(runs / "sas-smoke" / "checkpoint.prev.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 4, out
    return runs / "sas-smoke", args


def test_checkpoints_keep_their_predecessor(preempted):
    run, _ = preempted
    current, previous = (load_checkpoint(run / f)["state"] for f in ("checkpoint.pt", "checkpoint.prev.pt"))
    assert 0 < previous["microbatch_steps"] < current["microbatch_steps"]
    assert not list(run.glob(".*.tmp"))


def test_a_truncated_checkpoint_resumes_from_the_previous_one(preempted, tmp_path):
    run = tmp_path / "sas-smoke"
    shutil.copytree(preempted[0], run)
    args = list(preempted[1])
    args[args.index("--runs-dir") + 1] = str(tmp_path)
    previous = load_checkpoint(run / "checkpoint.prev.pt")["state"]
    damage(run / "checkpoint.pt", "truncate")
    resumed = cli_process(*args, "--resume", "--extend-budget", f"hours={(previous['elapsed_s'] + 4) / 3600}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    warning = [line for line in resumed.stderr.splitlines() if "checkpoint.pt" in line]
    assert len(warning) == 1 and "truncated" in warning[0] and "checkpoint.prev.pt" in warning[0]
    assert f"resuming {run} at microbatch step {previous['microbatch_steps']} " in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["completed"] and summary["microbatch_steps"] > previous["microbatch_steps"]
    assert summary["elapsed_s"] <= previous["elapsed_s"] + 4 + 0.5  # the redone work was not charged twice
    steps = [r["microbatch_steps"] for r in metrics(run)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # rows after the previous checkpoint were dropped
    assert load_checkpoint(run / "checkpoint.pt")["state"]["microbatch_steps"] == summary["microbatch_steps"]


@pytest.mark.parametrize("current", ["truncate", "flip"])
def test_with_both_checkpoints_damaged_resume_stops_with_one_line(preempted, tmp_path, current):
    run = tmp_path / "sas-smoke"
    shutil.copytree(preempted[0], run)
    args = list(preempted[1])
    args[args.index("--runs-dir") + 1] = str(tmp_path)
    damage(run / "checkpoint.pt", current)
    damage(run / "checkpoint.prev.pt", "truncate")
    out = cli_process(*args, "--resume")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "checkpoint.pt" in line and "checkpoint.prev.pt" in line and "--name" in line
    assert ("CRC" in line) == (current == "flip")


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 48 MB mounted for the test (root only; skipped otherwise, with the reason)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill `disk` until at most `leave` bytes are free."""
    with open(disk / "filler", "wb", buffering=0) as f:  # unbuffered: a failed write fails here, not at close
        for chunk in (1 << 20, 1 << 16, 1 << 12):
            while True:
                try:
                    f.write(b"\0" * chunk)
                except OSError:
                    break
    os.truncate(disk / "filler", max(0, (disk / "filler").stat().st_size - leave))


def test_a_full_disk_while_checkpointing_exits_5_and_keeps_the_previous_checkpoint(smoke_cache, small_disk):
    args = pretrain_args(smoke_cache, small_disk, "hours=1", "impl.checkpoint_minutes=0.02", "impl.log_seconds=0.3")
    run = small_disk / "preln-smoke"
    proc = run_cli(args)
    wait_for(run / "checkpoint.prev.pt", proc)  # an interval checkpoint after the one of step 0
    time.sleep(0.5)
    fill(small_disk, leave=64 * 1024)  # room for metrics rows and a summary, not for a checkpoint
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 5, out
    lines = [line for line in out.splitlines() if "error:" in line]
    assert len(lines) == 1 and "disk full writing" in lines[0] and "needs about" in lines[0] and "Traceback" not in out
    assert not list(run.glob(".*.tmp"))  # no temporary file left on the full disk
    state = load_checkpoint(run / "checkpoint.pt")["state"]  # intact (CRC-checked)
    assert state["microbatch_steps"] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stop_reason"] == "disk_full" and not summary["completed"]
    (small_disk / "filler").unlink()  # space again: the run resumes from its checkpoint
    resumed = cli_process(*args, "--resume", "--extend-budget", "hours=0.001")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


def test_torch_checkpoint_size_hint_is_close_to_the_file(tmp_path):
    from cramming_simple.train.checkpoint import save_checkpoint, state_bytes

    state = {
        "model": {"w": torch.zeros(256, 256)},
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(256, 256)}}},
        "rng": [1, 2],
    }
    save_checkpoint(tmp_path / "c.pt", state)
    size = (tmp_path / "c.pt").stat().st_size
    assert 0.9 * size <= state_bytes(state) <= size


def test_a_checkpoint_killed_mid_write_leaves_two_generations(tmp_path):
    path, prev = tmp_path / "checkpoint.pt", tmp_path / "checkpoint.prev.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2}, previous=prev)

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed  # what a SIGKILL in the middle of torch.save leaves: the old files and a temporary

    real = torch.save
    torch.save = killed
    try:
        with pytest.raises(Killed):
            save_checkpoint(path, {"step": 3}, previous=prev)
    finally:
        torch.save = real
    assert not os.path.samefile(path, prev)
    assert load_checkpoint(path)["step"] == 2 and load_checkpoint(prev)["step"] == 1
