"""Never lose a run: a folder two processes share, damaged checkpoints, a full disk, a kill after the last
checkpoint, and the one path every user-facing error takes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import hold_lock, pretrain_args, smoke_config
from helpers.runs import metrics, run_cli, wait_for

from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.errors import DiskFullError, LockedError, is_disk_full
from cramming_simple.runtime import FileLock, append_jsonl, atomic_write, atomic_write_bytes
from cramming_simple.train import loop
from cramming_simple.train.checkpoint import load_checkpoint
from cramming_simple.train.loop import pretrain


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cramming_simple", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


# ------------------------------------------------------------------------------------------ one folder, one process


def test_a_second_pretrain_on_a_busy_folder_exits_2_naming_the_holder(smoke_cache, tmp_path):
    args = pretrain_args(smoke_cache, tmp_path, "hours=1", "impl.log_seconds=0.3")
    run = tmp_path / "preln-smoke"
    first = run_cli(args)
    wait_for(run / "metrics.jsonl", first)
    started = time.monotonic()
    second = cli(*args, "--resume")  # a double-started `make pretrain` (which always passes --resume)
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


# ------------------------------------------------------------------------------------------ damaged checkpoints


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
    resumed = cli(*args, "--resume", "--extend-budget", f"hours={(previous['elapsed_s'] + 4) / 3600}")
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
    out = cli(*args, "--resume")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "checkpoint.pt" in line and "checkpoint.prev.pt" in line and "--name" in line
    assert ("CRC" in line) == (current == "flip")


# ------------------------------------------------------------------------------------------ the end of a run


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (the kernel would drop the run lock too)."""


def test_a_run_killed_after_its_last_checkpoint_resumes_without_a_step_more(smoke_cache, tmp_path, monkeypatch):
    cfg = smoke_config(smoke_cache, "preln", 5.0, "impl.log_seconds=1")
    run = tmp_path / cfg.name

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(loop, "save_model", killed)  # killed after the final checkpoint, before model/ is published
    with pytest.raises(Killed):
        pretrain(cfg, tmp_path)
    monkeypatch.undo()
    ckpt = load_checkpoint(run / "checkpoint.pt")["state"]
    after_kill = json.loads((run / "summary.json").read_text())  # written with the checkpoint: they agree
    assert not after_kill["completed"] and after_kill["microbatch_steps"] == ckpt["microbatch_steps"] > 0
    assert after_kill["elapsed_s"] == ckpt["elapsed_s"] and after_kill["final_loss"] == ckpt["last_loss"]

    summary = pretrain(cfg, tmp_path, resume=True)
    assert summary["completed"] and summary["stop_reason"] == "budget"
    assert summary["microbatch_steps"] == ckpt["microbatch_steps"]  # the budget was spent: no extra step
    assert summary["elapsed_s"] - ckpt["elapsed_s"] < 0.1 and summary["final_loss"] == ckpt["last_loss"]
    assert (run / "model" / "model.safetensors").exists()


def test_the_final_loss_never_comes_from_a_handful_of_microbatches(smoke_cache, tmp_path):
    cfg = smoke_config(smoke_cache, "preln", 4.0, "impl.log_seconds=1.5")
    summary = pretrain(cfg, tmp_path)
    rows = metrics(tmp_path / cfg.name)
    window = rows[-1]["microbatch_steps"] - (rows[-2]["microbatch_steps"] if len(rows) > 1 else 0)
    state = load_checkpoint(tmp_path / cfg.name / "checkpoint.pt")["state"]
    assert state["last_loss_steps"] >= window and summary["final_loss"] == state["last_loss"]


# ------------------------------------------------------------------------------------------ a full disk


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


def test_a_full_disk_is_recognised_however_the_library_reports_it():
    os_error = OSError(errno.ENOSPC, "No space left on device")
    try:  # torch.save reports it as a RuntimeError raised while the OSError was being handled
        try:
            raise os_error
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    except RuntimeError as err:
        assert is_disk_full(err)
    assert is_disk_full(
        Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    )  # safetensors
    assert not is_disk_full(RuntimeError("unexpected pos 704 vs 598")) and not is_disk_full(
        OSError(errno.EACCES, "denied")
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_metrics_row_on_a_full_disk_raises_disk_full():
    with pytest.raises(DiskFullError, match="/dev/full"):
        append_jsonl("/dev/full", {"loss": 1.0})


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
    resumed = cli(*args, "--resume", "--extend-budget", "hours=0.001")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr


# ------------------------------------------------------------------------------------------ small items


def test_the_saved_tokenizer_truncates_at_the_models_sequence_length(pretrained_run):
    tokenizer = load_tokenizer(pretrained_run / "model")
    assert tokenizer.model_max_length == 128
    ids = tokenizer("the film was good " * 200, truncation=True)["input_ids"]
    assert len(ids) == 128 and ids[-1] == tokenizer.sep_token_id


def test_user_errors_print_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    """In this process (the command's own main; `python -m cramming_simple` itself: test_cli)."""
    from cramming_simple.cli import main

    glue = ["glue", str(tmp_path / "nowhere"), "--protocol", "smoke", "--tasks", "rte"]
    assert main(glue) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    assert "no model at" in line and "Traceback" not in err
    assert main([*glue, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "no model at" in err.strip().splitlines()[-1]
    monkeypatch.setenv("CRAMMING_SIMPLE_DEBUG", "1")
    assert main(glue) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("CRAMMING_SIMPLE_DEBUG")
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    help_text = capsys.readouterr().out
    assert "exit codes:" in help_text and "5    disk full" in help_text and "--debug" in help_text


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
