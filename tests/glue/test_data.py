"""cramming_simple/glue/data.py: the hub's and the original layouts, pairs, padding, and bad data found before any
training."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.commands import one_error_line
from helpers.glue_data import (
    HUB_COLUMNS,
    copy_run,
    make_glue,
    sentiment_words,
    write_parquet,
    write_tsv,
)
from helpers.tokenizers import upload_model

from cramming_simple.cli import main
from cramming_simple.config import ConfigError
from cramming_simple.data import load_tokenizer
from cramming_simple.glue import data
from cramming_simple.glue.config import Protocol, load_protocol
from cramming_simple.glue.data import Encoded, Examples, tokenize
from cramming_simple.glue.tasks import TASKS, load_tasks

pytestmark = pytest.mark.usefixtures("one_thread")

LAYOUT_WORDS = (["good", "great"], ["bad", "dull"], "the a film story plot was is very quite long short".split())


def test_hub_parquet_and_tsv_layouts_load_the_same_examples(tmp_path, monkeypatch):
    import datasets

    glue = make_glue({"default": 12}, n_eval=9, words=LAYOUT_WORDS)
    table = load_tasks()
    hub_calls = []

    def fake_hub(path, name):  # what datasets.load_dataset("nyu-mll/glue", name) returns, built from the same frames
        hub_calls.append((path, name))
        return datasets.DatasetDict({split: datasets.Dataset.from_pandas(frame) for split, frame in glue[name].items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    hub = data.open_source(None, table, list(TASKS))
    parquet = data.open_source(write_parquet(glue, tmp_path / "parquet"), table, list(TASKS))
    tsv = data.open_source(write_tsv(glue, tmp_path / "tsv"), table, list(TASKS))
    assert (hub.kind, parquet.kind, tsv.kind) == ("hub", "parquet", "tsv")
    assert hub_calls == [("nyu-mll/glue", t) for t in TASKS]  # every task fetched up front
    for task in TASKS:
        spec = table.tasks[task]
        loaded = [data.load_task(source, task, spec) for source in (hub, parquet, tsv)]
        for split in ["train", *spec.splits]:
            frame = glue[task][split]
            for source in loaded:
                assert source[split].texts == [frame[c].tolist() for c in HUB_COLUMNS[task]], (task, split)
                np.testing.assert_allclose(source[split].labels, frame["label"].to_numpy(), rtol=1e-6)
                assert source[split].labels.dtype == (np.float32 if task == "stsb" else np.int64)
    # the quirks really were there: stray quotes in QQP and MNLI, CoLA without a header row, MNLI labels as words
    qqp = data.load_task(tsv, "qqp", table.tasks["qqp"])["train"]
    assert qqp.texts[0][0].startswith('"') and qqp.texts[1][0].endswith('12" long')
    assert (tmp_path / "tsv/CoLA/train.tsv").read_text().startswith("gj04\t")
    assert (
        "\tcontradiction\n" in (tmp_path / "tsv/MNLI/dev_mismatched.tsv").read_text()
        or "\tneutral\n" in (tmp_path / "tsv/MNLI/dev_mismatched.tsv").read_text()
    )


def test_batches_pad_to_the_longest_in_the_batch_only():
    ids = [[2, 7, 3], [2, 8, 9, 10, 3], [2, 3]]
    enc = data.Encoded(ids, np.array([0, 1, 0]), torch.device("cpu"))
    (x, mask, y), (x2, mask2, y2) = enc.batches(np.array([2, 0, 1]), 2)
    assert (
        x.tolist() == [[2, 3, 0], [2, 7, 3]]
        and mask.tolist() == [[True, True, False], [True, True, True]]
        and y.tolist() == [0, 0]
    )
    assert x2.tolist() == [[2, 8, 9, 10, 3]] and mask2.all() and y2.tolist() == [1]


def test_sentence_pairs_are_tokenised_as_pairs(pretrained_run):
    tokenizer = load_tokenizer(pretrained_run / "model")
    pair = data.Examples([["the film"], ["was good"]], np.array([1]))
    ids = data.tokenize(tokenizer, pair, max_length=128)[0]
    expected = ["[CLS]", *tokenizer.tokenize("the film"), "[SEP]", *tokenizer.tokenize("was good"), "[SEP]"]
    assert tokenizer.convert_ids_to_tokens(ids) == expected and expected.count("[SEP]") == 2
    long = data.Examples([["the film " * 100], ["was good " * 100]], np.array([1]))
    assert len(data.tokenize(tokenizer, long, max_length=128)[0]) == 128


def set_line(path: Path, line: int, edit) -> None:
    """Apply `edit(cells) -> cells` to one line (1-based) of a TSV file."""
    lines = path.read_text().split("\n")
    lines[line - 1] = "\t".join(edit(lines[line - 1].split("\t")))
    path.write_text("\n".join(lines))


def rename_header(path: Path, old: str, new: str) -> None:
    set_line(path, 1, lambda cells: [new if c == old else c for c in cells])


def non_utf8(path: Path, line: int) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1].replace(b" ", b" \xff", 1)
    path.write_bytes(b"\n".join(lines))


# (layout, what, damage on the written folder, expected in the one error line). The damaged task is trained
# after sst2 in the table's order, so without the up-front check sst2 would have trained first.
BAD_TSV = {
    "missing column": (
        lambda d: rename_header(d / "RTE/dev.tsv", "sentence2", "sentence_2"),
        ["RTE/dev.tsv, line 1", "missing column(s) ['sentence2']"],
    ),
    "empty file": (lambda d: (d / "RTE/train.tsv").write_text(""), ["RTE/train.tsv", "empty file"]),
    "header only": (
        lambda d: (d / "RTE/train.tsv").write_text((d / "RTE/train.tsv").read_text().split("\n")[0] + "\n"),
        ["RTE/train.tsv", "only a header line"],
    ),
    "non-UTF-8": (lambda d: non_utf8(d / "RTE/train.tsv", 4), ["RTE/train.tsv, line 4", "not UTF-8"]),
    "label out of range": (
        lambda d: set_line(d / "MRPC/train.tsv", 3, lambda c: ["5", *c[1:]]),
        ["MRPC/train.tsv, line 3", "label '5'", "0..1"],
    ),
    "unknown label": (
        lambda d: set_line(d / "RTE/dev.tsv", 2, lambda c: [*c[:-1], "maybe"]),
        ["RTE/dev.tsv, line 2", "label 'maybe'", "not_entailment"],
    ),
}


def damage_frames(glue: dict, what: str) -> None:
    """The same defects in the hub's schema (for parquet files and hub datasets)."""
    if what == "missing column":
        glue["rte"]["validation"] = glue["rte"]["validation"].drop(columns=["sentence2"])
    elif what == "header only":
        glue["rte"]["validation"] = glue["rte"]["validation"].iloc[:0]
    elif what == "non-UTF-8":  # parquet strings are UTF-8 by definition: undecodable text arrives as bytes
        frame = glue["rte"]["train"]
        frame["sentence1"] = [s.encode() if i != 3 else b"\xff" + s.encode() for i, s in enumerate(frame["sentence1"])]
    elif what == "label out of range":
        glue["mrpc"]["train"].loc[2, "label"] = 5
    elif what == "unknown label":
        frame = glue["rte"]["validation"]
        frame["label"] = ["maybe" if i == 1 else str(v) for i, v in enumerate(frame["label"])]


BAD_PARQUET = {
    "missing column": ["rte/validation-00000-of-00001.parquet", "missing column(s) ['sentence2']"],
    "empty file": ["rte/train-00000-of-00002.parquet", "cannot read it as parquet"],
    "header only": ["rte/validation-00000-of-00001.parquet", "no rows"],
    "non-UTF-8": ["rte/train-00000-of-00002.parquet", "row 0: column 'sentence1'", "expected a string"],
    "label out of range": ["mrpc/train-00000-of-00002.parquet", "row 2: label 5", "0..1"],
    "unknown label": ["rte/validation-00000-of-00001.parquet", "row 1: label 'maybe'", "0..1"],
}


def assert_fails_before_training(run: Path, glue_dir: Path | None, expected: list[str], capsys) -> None:
    capsys.readouterr()
    args = [
        "glue",
        str(run),
        "--protocol",
        "smoke",
        "--tasks",
        "sst2,mrpc,rte",
        *(["--data-dir", str(glue_dir)] if glue_dir else []),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(e in lines[0] for e in expected), lines[0]
    assert not list(run.glob("glue/*/seed*.json"))  # no task was trained


@pytest.mark.parametrize("what", list(BAD_TSV))
def test_bad_tsv_files_fail_before_any_training(what, small_glue, pretrained_run, tmp_path, capsys):
    damage, expected = BAD_TSV[what]
    glue_dir = write_tsv(small_glue, tmp_path / "tsv")
    damage(glue_dir)
    assert_fails_before_training(copy_run(pretrained_run, tmp_path), glue_dir, expected, capsys)


@pytest.mark.parametrize("what", list(BAD_PARQUET))
def test_bad_parquet_files_fail_before_any_training(what, small_glue, pretrained_run, tmp_path, capsys):
    glue = {task: {split: frame.copy() for split, frame in splits.items()} for task, splits in small_glue.items()}
    damage_frames(glue, what)
    glue_dir = write_parquet(glue, tmp_path / "parquet")
    if what == "empty file":
        (glue_dir / "rte/train-00000-of-00002.parquet").write_bytes(b"")
    assert_fails_before_training(copy_run(pretrained_run, tmp_path), glue_dir, BAD_PARQUET[what], capsys)


@pytest.mark.parametrize("what", ["missing column", "label out of range", "unknown label"])
def test_bad_hub_data_fails_before_any_training(what, small_glue, pretrained_run, tmp_path, capsys, monkeypatch):
    import datasets

    glue = {task: {split: frame.copy() for split, frame in splits.items()} for task, splits in small_glue.items()}
    damage_frames(glue, what)
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda path, name: datasets.DatasetDict({s: datasets.Dataset.from_pandas(f) for s, f in glue[name].items()}),
    )
    task = "mrpc" if what == "label out of range" else "rte"
    expected = {
        "missing column": "missing column(s) ['sentence2']",
        "label out of range": "row 2: label 5",
        "unknown label": "row 1: label 'maybe'",
    }[what]
    assert_fails_before_training(copy_run(pretrained_run, tmp_path), None, [f"nyu-mll/glue ({task}", expected], capsys)


def test_no_examples_left_after_the_protocols_subsets_is_an_error_not_a_division_by_zero(
    small_glue, pretrained_run, tmp_path
):
    from cramming_simple.glue.data import Examples, check_counts

    empty = Examples([[]], np.zeros(0, dtype=np.int64))
    with pytest.raises(ConfigError, match="GLUE task rte: no train examples"):
        check_counts("rte", {"train": empty, "validation": empty}, Protocol())
    with pytest.raises(ConfigError, match="no validation examples to evaluate"):
        data.prepare(
            {"train": data.Examples([["a b"]], np.array([1])), "validation": empty},
            None,
            Protocol(),
            torch.device("cpu"),
            "rte",
        )


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


def test_glue_inputs_start_with_cls_whatever_the_tokenizers_template(upload, tmp_path):
    tokenizer = load_tokenizer(upload / "tokenizer")
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    one = Examples([["the film was good", "a dull movie " * 80]], np.array([1, 0]))
    two = Examples([["the film", "a movie " * 80], ["was good", "was dull"]], np.array([1, 0]))
    assert tokenizer("the film was good")["input_ids"][0] != cls  # its own template: "$A <sep>", no cls
    clean = tokenize(tokenizer, one, 16)
    cramming = tokenize(tokenizer, one, 16, single_text="cramming")
    pairs = tokenize(tokenizer, two, 16)
    words = tokenizer("the film was good", add_special_tokens=False)["input_ids"]
    assert clean[0] == [cls, *words, sep] and cramming[0] == [cls, *words, sep, sep]
    assert len(clean[1]) == len(cramming[1]) == 16 and clean[1][-1] == sep and cramming[1][-2:] == [sep, sep]
    assert pairs[0][0] == cls and pairs[0].count(sep) == 2 and pairs[0][-1] == sep and len(pairs[1]) == 16
    ids, mask, _ = next(Encoded(clean, one.labels, torch.device("cpu"), pad).batches(np.arange(2), 2))
    assert (ids[~mask] == pad).all() and ids.shape[1] == 16

    # `glue --show-inputs`: what the model is fed, for a one-sentence task, under both protocols
    data = write_parquet(
        make_glue({"default": 24}, n_eval=8, words=sentiment_words(tokenizer)), tmp_path / "glue"
    )  # fmt: skip
    shown = {}
    for protocol in ("smoke", "smoke-published"):
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["glue", str(upload_model(upload, tmp_path)), "--protocol", protocol, "--tasks", "cola,sst2",
                         "--data-dir", str(data), "--show-inputs", "2"])  # fmt: skip
        assert code == 0
        shown[protocol] = [line.strip() for line in stdout.getvalue().splitlines() if line.startswith("  ")]
        assert not list((tmp_path / "upload-run").glob("glue/*/seed*.json"))  # nothing trained
    assert len(shown["smoke"]) == 4 and all(line.startswith("<cls> ") for lines in shown.values() for line in lines)
    assert all(line.endswith(" <sep>") and not line.endswith("<sep> <sep>") for line in shown["smoke"])
    assert all(line.endswith("<sep> <sep>") for line in shown["smoke-published"])


def test_drop_last_with_fewer_examples_than_a_batch_fails_before_training():
    from cramming_simple.config import ConfigError
    from cramming_simple.glue.data import check_counts

    examples = Examples([["a", "b", "c"]], np.array([0, 1, 0]))
    protocol = load_protocol("smoke-published", ["batch_size=4"])[1]
    with pytest.raises(ConfigError, match="fill no batch"):
        check_counts("cola", {"train": examples, "validation": examples}, protocol)
    check_counts("cola", {"train": examples, "validation": examples}, load_protocol("smoke", ["batch_size=4"])[1])
