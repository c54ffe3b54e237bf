"""No prompt, no traceback, nothing left behind, and what a researcher sees after a partial GLUE rerun or an export:
one-line errors, GLUE data checked to the line, a summary and a card from every result on disk, -q, progress in
logs, the report's replicates and comparisons, and the Hugging Face classes' BERT options."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import hold_lock, pretrain_args
from helpers.glue_data import copy_run, make_glue, sentiment_words, write_parquet, write_tsv
from helpers.runs import latex_missing, make_run, md_rows, report

from cramming_simple.cli import main
from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.errors import DiskFullError

FAST = ["epochs=1", "max_train_examples=16", "max_eval_examples=8"]


def command(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cramming_simple", *args], capture_output=True, text=True, timeout=timeout
    )


def here(*args: str) -> subprocess.CompletedProcess:
    """The command line in this process (seconds faster than a new interpreter): its code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def in_a_terminal(args: list[str], timeout: float = 240) -> tuple[int, str]:
    """Run `python -m cramming_simple ARGS` under a pseudo-terminal (stdin, stdout and stderr a tty): its exit
    code and everything it printed. A prompt would wait for an answer until the timeout."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.execv(sys.executable, [sys.executable, "-m", "cramming_simple", *args])
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out += data
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ no prompt


@pytest.fixture(scope="module")
def glue_parquet(pretrained_run, tmp_path_factory):
    words = sentiment_words(load_tokenizer(pretrained_run / "model"))
    return write_parquet(make_glue({"default": 24}, n_eval=8, words=words), tmp_path_factory.mktemp("glue"))


def test_glue_and_export_never_ask_to_run_remote_code_on_a_terminal(pretrained_run, glue_parquet, tmp_path):
    run = copy_run(pretrained_run, tmp_path)
    glue = ["glue", str(run), "--protocol", "smoke", "--tasks", "rte", "--seeds", "1", "--data-dir", str(glue_parquet)]
    for args in ([*glue, *FAST], ["export", str(run), "--out", str(tmp_path / "export")]):
        started = time.monotonic()
        code, out = in_a_terminal(args)
        assert code == 0, out
        assert "[y/N]" not in out and "custom code" not in out and "model of type" not in out, out
        assert time.monotonic() - started < 120
    assert (run / "glue" / "rte" / "seed1.json").exists() and (tmp_path / "export" / "README.md").exists()


# ------------------------------------------------------------------------------------------ one line, exit 2


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


def test_the_disk_full_line_says_how_much_is_free():
    message = str(DiskFullError("/tmp/no/such/folder/yet/model.safetensors", 1 << 20))
    assert "? bytes" not in message and "free on that file system" in message


def glue_fails(run: Path, data: Path, tasks: str, capsys) -> str:
    capsys.readouterr()
    code = main(["glue", str(run), "--protocol", "smoke", "--tasks", tasks, "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert code == 2
    assert not list(run.glob("glue/*/seed*.json"))  # nothing trained
    return one_error_line(err)


def edit_line(path: Path, line: int, edit) -> None:
    lines = path.read_text().split("\n")
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines))


def test_glue_data_fails_before_training_naming_file_and_line(small_glue, pretrained_run, tmp_path, capsys):
    cases = {
        "STS-B/dev.tsv": (lambda c: "\t".join([*c.split("\t")[:-1], "5.5"]), "a score in [0, 5]"),
        "RTE/dev.tsv": (lambda c: c.split("\t")[0], "too few"),  # a row cut short: never dropped
        "SST-2/train.tsv": (lambda c: "x" * 140_000 + "\t" + c, "field larger than field limit"),
    }
    for i, (file, (edit, expected)) in enumerate(cases.items()):
        data = write_tsv(small_glue, tmp_path / f"tsv{i}")
        edit_line(data / file, 3, edit)
        line = glue_fails(copy_run(pretrained_run, tmp_path / f"r{i}"), data, "stsb,rte,sst2", capsys)
        assert f"{file}, line 3" in line and expected in line, line
    glue = {task: {split: frame.copy() for split, frame in splits.items()} for task, splits in small_glue.items()}
    glue["stsb"]["validation"].loc[2, "label"] = -0.5
    data = write_parquet(glue, tmp_path / "parquet")
    line = glue_fails(copy_run(pretrained_run, tmp_path / "rp"), data, "stsb", capsys)
    assert "row 2" in line and "a score in [0, 5]" in line, line


# ------------------------------------------------------------------------------------------ after a partial rerun


def test_summary_and_card_hold_every_result_on_disk_and_the_commands_that_made_them(
    pretrained_run, glue_parquet, tmp_path
):
    run = copy_run(pretrained_run, tmp_path)
    for src in ("summary.json", "config.yaml"):
        shutil.copy(pretrained_run / src, run / src)
    data = ["--data-dir", str(glue_parquet), "--protocol", "smoke", "--seeds", "1"]
    assert main(["glue", str(run), "--tasks", "sst2,stsb", *data, *FAST]) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = run / "glue" / "sst2" / f".seed1.predictions.npz.{int(dead.stdout)}-0a1b2c.tmp"  # a killed writer's
    left.write_bytes(b"half")
    assert main(["glue", str(run), "--tasks", "rte", *data, *FAST]) == 0  # a rerun of one task
    assert not left.exists()
    summary = json.loads((run / "glue" / "summary.json").read_text())
    assert {c: summary["columns"][c]["n"] for c in ("SST-2", "STS-B", "RTE")} == {"SST-2": 1, "STS-B": 1, "RTE": 1}
    assert summary["tasks"] == ["sst2", "stsb", "rte"]
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "e")]) == 0
    card = (tmp_path / "e" / "README.md").read_text()
    header = next(line for line in card.splitlines() if line.startswith("| SST-2"))
    assert header.startswith("| SST-2 | STS-B | RTE | GLUE |")
    glue_lines = [line for line in card.splitlines() if line.startswith("cramming-simple glue")]
    assert len(glue_lines) == 1, glue_lines
    for part in ("--protocol smoke", f"--data-dir {glue_parquet}", "--tasks sst2,stsb,rte", "--seeds 1", *FAST):
        assert part in glue_lines[0], (part, glue_lines[0])

    from huggingface_hub import ModelCard

    meta = ModelCard.load(tmp_path / "e" / "README.md").data
    assert meta.license == "mit" and meta.pipeline_tag == "fill-mask"
    scores = {r.dataset_config: r.metric_value for r in meta.eval_results}
    assert scores["rte"] == round(summary["columns"]["RTE"]["mean"], 2) and set(scores) == {"sst2", "stsb", "rte"}
    assert oct((tmp_path / "e" / "model.safetensors").stat().st_mode & 0o777) == "0o644"
    assert all(p.stat().st_mode & 0o644 == 0o644 for p in (tmp_path / "e").iterdir())

    fresh = copy_run(pretrained_run, tmp_path / "fresh")  # no GLUE yet: the card says how to run it
    assert main(["-q", "export", str(fresh), "--out", str(tmp_path / "f")]) == 0
    assert f"cramming-simple glue {fresh} --protocol paper" in (tmp_path / "f" / "README.md").read_text()


def test_q_silences_glue_report_and_export(pretrained_run, glue_parquet, tmp_path):
    run = copy_run(pretrained_run, tmp_path)
    for src in ("summary.json", "config.yaml", "metrics.jsonl"):
        shutil.copy(pretrained_run / src, run / src)
    glue = ["glue", str(run), "--protocol", "smoke", "--tasks", "rte", "--seeds", "1", "--data-dir", str(glue_parquet)]
    for args in (
        [*glue, *FAST],
        ["report", str(run), "--out", str(tmp_path / "report"), "--reference", "none"],
        ["export", str(run), "--out", str(tmp_path / "export")],
    ):
        done = here("-q", *args)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "", done.stdout
        assert "\r" not in done.stderr and "%|" not in done.stderr, done.stderr


def test_progress_never_writes_carriage_returns_into_a_log(tmp_path):
    runs = tmp_path / "runs"
    cache = tmp_path / "cache"  # a fresh preparation: its bar too
    done = command(
        "pretrain", "--block", "preln", "--budget", "smoke", "--runs-dir", str(runs), f"data.cache_dir={cache}",
        "impl.device=cpu", "hours=0.0004", "data.max_documents=600", "impl.log_seconds=0.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr
    assert "[preparing builtin data]" in done.stdout and "[pretrain preln]" in done.stdout


# ------------------------------------------------------------------------------------------ the report


def test_same_seed_runs_are_counted_once_and_a_backup_copy_is_no_error(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "preln-24h", "preln")
    make_run(runs, "sas-24h", "sas")
    shutil.copytree(runs / "sas-24h", runs / "sas-24h.bak")  # cp -a: its files still say sas-24h
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r")])
    assert code == 0, err
    warned = [line for line in err.splitlines() if "same pretraining seed" in line]
    assert len(warned) == 1 and "sas-24h.bak" in warned[0] and "counted" in warned[0]
    table1 = pd.read_csv(tmp_path / "r" / "table1.csv")
    sas = table1[(table1.kind == "run") & (table1.block == "sas")]
    assert len(sas) == 1 and sas.replicates.iloc[0] == 1 and sas.glue_n.iloc[0] == 3


def test_the_report_names_live_runs_running_and_warns_of_missing_pieces(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "preln-24h", "preln")
    live = make_run(runs, "sas-24h", "sas", completed=False)
    summary = json.loads((live / "summary.json").read_text())
    summary["stop_reason"] = None  # between two checkpoints of a live run
    (live / "summary.json").write_text(json.dumps(summary))
    odd = make_run(runs, "odd-24h", "preln")
    (odd / "config.yaml").unlink()
    summary = json.loads((odd / "summary.json").read_text())
    (odd / "summary.json").write_text(json.dumps({**summary, "block": "mystery"}))
    early = make_run(runs, "sasp-24h", "sasp", glue=False)  # live, before its first checkpoint: no summary yet
    (early / "summary.json").unlink()
    holders = [hold_lock(run / ".lock", "cramming-simple pretrain") for run in (live, early)]
    try:
        code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r")])
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert code == 0, err
    index = (tmp_path / "r" / "index.md").read_text()
    assert "stop reason: nan" not in index and "profile nan" not in index
    for name in ("sas-24h", "sasp-24h"):
        line = next(line for line in index.splitlines() if line.startswith(f"- **{name}**"))
        assert "stop reason: running" in line, line
    assert sum("odd-24h has no config.yaml" in line for line in err.splitlines()) == 1
    assert sum("unknown block 'mystery'" in line for line in err.splitlines()) == 1
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r2")])
    index = (tmp_path / "r2" / "index.md").read_text()
    assert "stop reason: killed" in index and "sasp-24h" not in index  # no one trains it: not a run to report


def test_a_short_run_is_not_set_against_the_published_numbers(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "preln-smoke", "preln", budget="smoke", hours=0.033, skip=[("cola", s) for s in (1, 2, 3)])
    make_run(runs, "sas-smoke", "sas", budget="smoke", hours=0.033, skip=[("cola", s) for s in (1, 2, 3)])
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r")])
    assert code == 0, err
    table1 = (tmp_path / "r" / "table1.md").read_text()
    assert "Δ GLUE" not in table1 and "no Δ vs published" in table1
    table2 = (tmp_path / "r" / "table2.md").read_text()
    assert not [r for r in md_rows(table2) if r[1] == "Δ vs published"] and "CoLA" not in md_rows(table2)[0]
    make_run(runs, "sas-24h", "sas")  # a run of the published budget: compared, the others not
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r3")])
    rows = md_rows((tmp_path / "r3" / "table2.md").read_text())
    deltas = [r for r in rows if r[1] == "Δ vs published"]
    assert len(deltas) == 1 and "CoLA" in rows[0]


def test_runs_that_read_different_ids_under_one_data_key_are_refused(tmp_path):
    runs = tmp_path / "runs"
    for name, block, tokenizer in (("preln-24h", "preln", "a" * 64), ("sas-24h", "sas", "b" * 64)):
        run = make_run(runs, name, block)
        summary = json.loads((run / "summary.json").read_text())
        summary["data"]["tokenizer_sha256"] = tokenizer
        (run / "summary.json").write_text(json.dumps(summary))
    code, _, err = report(["--runs-dir", str(runs), "--out", str(tmp_path / "r")])
    assert code == 2 and "tokenizer differs" in one_error_line(err)


def test_compact_table3_keeps_the_difference_and_marks_what_the_interval_excludes():
    from cramming_simple.report.render import latex
    from cramming_simple.report.tables import Notes, Table

    data = pd.DataFrame(
        [{"kind": "vs_preln", "block": "sas", "title": "SAS", "run": "a - b", "RTE within_noise": False}]
    )
    shown = pd.DataFrame([{"Block": "SAS", "Run": "a vs b", "RTE": "+2.0 [+0.5, +3.5]"}])
    text = latex(Table(data, shown, Notes(), None), "compact")
    assert r"\textbf{+2.0}" in text and "+0.5" not in text


# ------------------------------------------------------------------------------------------ Hugging Face classes


def test_the_hugging_face_classes_honour_berts_options(pretrained_run, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    import cramming_simple  # noqa: F401 - registers the classes

    folder = pretrained_run / "model"
    mlm = AutoModelForMaskedLM.from_pretrained(folder)
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    out = mlm(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    depth = mlm.config.num_hidden_layers
    assert len(out.hidden_states) == depth + 1 and out.hidden_states[0].shape == (2, 9, mlm.config.hidden_size)
    assert len(out.attentions) == depth and out.attentions[0].shape == (2, mlm.config.num_attention_heads, 9, 9)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, mlm.config.num_attention_heads, 9))
    assert out.attentions[0][1, :, :, 6:].abs().max() == 0  # padding keys get no attention
    plain = mlm(input_ids=ids, attention_mask=mask)
    assert plain.hidden_states is None and plain.attentions is None
    as_tuple = mlm(input_ids=ids, attention_mask=mask, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], plain.logits)

    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    classifier.train()
    labels = torch.tensor([0, 1])
    torch.manual_seed(0)
    loss = classifier(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = [p.grad.clone() for p in classifier.parameters()]
    classifier.zero_grad()
    enable = getattr(classifier, "activation_checkpointing_enable", None) or classifier.gradient_checkpointing_enable
    enable()  # transformers 5 renamed it; 4 has only the old name
    calls = []
    for layer in classifier.encoder.layers:  # each block checkpoints itself (a GradientCheckpointingLayer: model.hf)
        checkpointed = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, f=checkpointed, **k: calls.append(1) or f(*a, **k)
    torch.manual_seed(0)
    again = classifier(input_ids=ids, attention_mask=mask, labels=labels).loss
    again.backward()
    assert len(calls) == depth
    torch.testing.assert_close(again, loss)
    for a, b in zip(grads, (p.grad for p in classifier.parameters())):
        torch.testing.assert_close(a, b)


TABLE3_DOC = r"""\documentclass[10pt,twocolumn]{article}
\usepackage[margin=0.75in]{geometry}
\usepackage{booktabs,graphicx}
\begin{document}
\begin{table*}\centering\input{table3.tex}\caption{Table 3, two columns wide}\end{table*}
Text.
\end{document}
"""


@pytest.mark.skipif(latex_missing() is not None, reason=latex_missing() or "")
def test_compact_table3_fits_a_two_column_paper(two_blocks_with_predictions, tmp_path):
    _, runs, _ = two_blocks_with_predictions
    overfull = {}
    for style in ("full", "compact"):
        out = tmp_path / style
        code, _, err = report([str(runs["preln"]), str(runs["sas"]), "--out", str(out), "--latex", style])
        assert code == 0, err
        (out / "doc.tex").write_text(TABLE3_DOC)
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=out, capture_output=True
        )
        log = (out / "doc.log").read_text(errors="replace")
        assert done.returncode == 0, log[-2000:]
        overfull[style] = [line for line in log.splitlines() if line.startswith("Overfull \\hbox")]
    assert overfull["full"] and not overfull["compact"]  # the check can fail: the full table overflows
