"""cramming_simple/cli.py: the console command: subcommands, help, exit codes, one-line errors, verbosity."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import pretrain_args
from helpers.commands import QUICK_GLUE, one_error_line
from helpers.glue_data import copy_run

from cramming_simple.cli import COMMANDS, main


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


def here(*args: str) -> subprocess.CompletedProcess:
    """The command line in this process (seconds faster than a new interpreter): its code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_mistakes_print_one_line_and_exit_2(pretrained_run, smoke_cache, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(pretrained_run, broken)
    weights = broken / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    done = here("export", str(broken), "--out", str(tmp_path / "e"))
    assert done.returncode == 2 and "model.safetensors" in one_error_line(done.stderr)

    if not torch.cuda.is_available():
        done = here(*pretrain_args(smoke_cache, tmp_path / "runs", "impl.device=cuda")[:-1], "impl.device=cuda")
        assert done.returncode == 2 and "impl.device=cuda" in one_error_line(done.stderr)

    a_file = tmp_path / "runs-file"
    a_file.write_text("not a folder")
    for args in (pretrain_args(smoke_cache, a_file), ["report", "--runs-dir", str(a_file)]):
        done = here(*args)
        assert done.returncode == 2 and "is a file" in one_error_line(done.stderr)

    for empty in ("train.lr=", "hours="):
        done = here(*pretrain_args(smoke_cache, tmp_path / "runs"), empty)
        assert done.returncode == 2 and empty.split("=")[0] in one_error_line(done.stderr), done.stderr
    assert not (tmp_path / "runs").exists()


def test_q_silences_glue_report_and_export(pretrained_run, glue_parquet, tmp_path):
    run = copy_run(pretrained_run, tmp_path)
    for src in ("summary.json", "config.yaml", "metrics.jsonl"):
        shutil.copy(pretrained_run / src, run / src)
    glue = ["glue", str(run), "--protocol", "smoke", "--tasks", "rte", "--seeds", "1", "--data-dir", str(glue_parquet)]
    for args in (
        [*glue, *QUICK_GLUE],
        ["report", str(run), "--out", str(tmp_path / "report"), "--reference", "none"],
        ["export", str(run), "--out", str(tmp_path / "export")],
    ):
        done = here("-q", *args)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "", done.stdout
        assert "\r" not in done.stderr and "%|" not in done.stderr, done.stderr
