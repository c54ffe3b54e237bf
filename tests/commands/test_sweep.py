"""cramming_simple/commands/sweep.py: bad sweep input is one line and exit 2; the GLUE data is checked before anything
runs."""

from __future__ import annotations

import pytest
from helpers.slurm import sweep_args

from cramming_simple.cli import main


@pytest.mark.parametrize(
    "args, said",
    [
        (["sweep", "--blocks", "preln", "--seeds", "x"], "--seeds takes a comma list of integers"),
        (["sweep", "--blocks", "preln", "--launcher", "slurm", "--slurm", "time=abc"], "time=abc: an integer"),
        (["sweep", "--blocks", "preln", "train.betas=[0.9"], "cannot read 'train.betas=[0.9'"),
        (["pretrain", "--block", "preln", "--budget", "smoke", "train.betas=[0.9"], "cannot read 'train.betas=[0.9'"),
        (["pretrain", "--block", "preln", "--budget", "smoke", "--name", ""], "--name must be a folder name"),
        (["pretrain", "--block", "preln", "--budget", "smoke", "--name", "a/b"], "--name must be a folder name"),
        (["sweep", "--blocks", "preln", "--max-parallel", "2"], "--max-parallel is for --launcher slurm"),
        (["sweep", "--blocks", "preln", "--launcher", "slurm", "--max-parallel", "0"], "--max-parallel takes a whole"),
        (
            [
                "sweep",
                "--blocks",
                "preln",
                "--launcher",
                "slurm",
                "--max-parallel",
                "2",
                "--slurm",
                "array_parallelism=2",
            ],
            "not both",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, said, tmp_path, capsys):
    assert main([*args, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err


def test_a_sweep_checks_its_glue_data_before_anything_runs(smoke_cache, tmp_path, capsys):
    """GLUE data is prepared (from the hub: downloaded once into the cache) or checked (--data-dir) by the sweep
    command itself: a missing task fails now, in one line, not in 8 x N GLUE jobs after a day of pretraining."""
    empty = tmp_path / "glue"
    empty.mkdir()
    args = sweep_args(tmp_path / "runs", smoke_cache, empty, blocks="preln")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--data-dir {empty} holds no GLUE data" in err[0], err
    assert not (tmp_path / "runs" / "preln-smoke-s0").exists() and not (tmp_path / "runs" / ".sweep").exists()
