"""The console command: every stage is a subcommand; params prints the parameter table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cramming_simple.cli import COMMANDS, main
from cramming_simple.model import BLOCKS


def test_params_json_counts_every_block(capsys):
    assert main(["params", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert list(counts) == list(BLOCKS)
    for c in counts.values():
        assert set(c) == {"params", "non_embedding"} and c["params"] - c["non_embedding"] == 32768 * 768 + 1 + 2 * 768
    assert abs(counts["preln"]["params"] - 120e6) < 0.5e6 and abs(counts["sasp"]["params"] - 101e6) < 0.5e6


def test_params_table_names_blocks_and_arch(capsys):
    assert main(["params", "--arch", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "arch: tiny" in out and all(BLOCKS[b].title in out for b in BLOCKS)


@pytest.mark.parametrize("command", ["params", *COMMANDS])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "usage: cramming-simple " + command in capsys.readouterr().out


def test_python_dash_m_entry_point_and_user_errors_exit_2():
    out = subprocess.run(
        [sys.executable, "-m", "cramming_simple", "pretrain", "--block", "nope", "--budget", "smoke"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "Valid blocks" in out.stderr and "Traceback" not in out.stderr


def test_version_and_verbosity(pretrained_run, capsys):
    import logging

    import cramming_simple
    from cramming_simple.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"cramming-simple {cramming_simple.__version__}"

    resume = ["pretrain", "--resume", "--runs-dir", str(pretrained_run.parent), "--name", pretrained_run.name]
    assert main(resume) == 0  # the run is complete: one info line, on stdout
    assert capsys.readouterr().out.strip() == f"{pretrained_run} is complete; nothing to do"
    assert main(["-q", *resume]) == 0 and capsys.readouterr() == ("", "")  # -q: warnings only
    assert main([*resume, "-v"]) == 0  # -v (also after the subcommand): debug lines too
    out = capsys.readouterr().out
    assert out.startswith("resolved config:\nname: tiny-preln\n") and "is complete; nothing to do" in out

    logging.getLogger("cramming_simple.report").warning("a run is left out")  # warnings: stderr, marked
    assert capsys.readouterr() == ("", "warning: a run is left out\n")
