"""The GLUE stage: data layouts, metrics, schedules, fine-tuning that learns, reruns, failures, workers."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import alive, children, hold_lock
from helpers.glue_data import (
    FAST,
    HUB_COLUMNS,
    copy_run,
    make_glue,
    write_parquet,
    write_tsv,
)

from cramming_simple.cli import main
from cramming_simple.config import ConfigError, merge_typed
from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.folders import save_model
from cramming_simple.glue import data, finetune
from cramming_simple.glue.config import Protocol, load_protocol
from cramming_simple.glue.metrics import compute
from cramming_simple.glue.tasks import TASKS, TaskTable, load_tasks
from cramming_simple.model import MaskedLM, arch_config
from cramming_simple.presets import shipped

# tiny models run fastest on one thread, and CI's two cores are shared with the spawned GLUE workers
pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------------------------- fixture data


def run_glue(run: Path, glue_dir: Path, *extra: str) -> int:
    return main(["glue", str(run), "--data-dir", str(glue_dir), "--protocol", "smoke", *extra])


def results(run: Path) -> dict[tuple[str, int], dict]:
    return {
        (r["task"], r["seed"]): r
        for r in (pd.read_json(p, typ="series").to_dict() for p in sorted(run.glob("glue/*/seed*.json")))
    }


# ----------------------------------------------------------------------------------------------- configs


def test_every_shipped_yaml_parses_and_validates():
    table = load_tasks()
    assert set(TASKS) <= set(table.tasks)
    assert table.tasks["mnli"].splits == ["validation_matched", "validation_mismatched"]
    assert table.tasks["mnli"].tsv.label_map == {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert table.tasks["stsb"].regression and table.tasks["stsb"].num_labels == 1
    presets = sorted(p.stem for p in shipped("glue").glob("*.yaml") if p.stem != "tasks")
    assert presets == ["cramming", "paper", "published", "smoke", "smoke-published"]
    loaded = {name: load_protocol(name)[1] for name in presets}
    paper = loaded["paper"]
    assert paper == Protocol()  # the dataclass defaults are the paper's protocol, so partial presets inherit it
    assert (paper.epochs, paper.batch_size, paper.lr, paper.betas, paper.eps, paper.weight_decay) == (
        5,
        32,
        1.5e-4,
        (0.9, 0.98),
        1e-6,
        0.0,
    )
    assert (paper.schedule, paper.warmup, paper.max_length, paper.dropout, paper.seeds) == (
        "cosine",
        0.1,
        128,
        0.1,
        [1, 2, 3],
    )
    cramming = loaded["cramming"]
    assert (cramming.batch_size, cramming.lr) == (16, 4e-5) and cramming.epochs == 5 and cramming.betas == paper.betas
    smoke = loaded["smoke"]
    assert smoke.max_train_examples and smoke.max_eval_examples


def test_unknown_override_key_fails_listing_valid_keys(capsys):
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'.*batch_size.*lr"):
        load_protocol("paper", ["learning_rate=1e-4"])
    assert load_protocol("paper", ["lr=1e-4", "epochs=3"])[1].lr == 1e-4
    with pytest.raises(ConfigError, match="warmup"):
        load_protocol("smoke", ["warmup=1.5"])
    with pytest.raises(ConfigError, match="task table lacks"):
        merge_typed(TaskTable, None, [("t", {"tasks": {"cola": {"texts": ["sentence"], "metrics": ["accuracy"]}}})])
    assert main(["glue", "somewhere", "--protocol", "smoke", "epoch=3"]) == 2
    assert "Valid keys" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- data


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


# ----------------------------------------------------------------------------------------------- metrics, schedule


def test_metrics_match_hand_computed_values():
    preds, labels = np.array([1, 0, 1, 1, 0, 1]), np.array([1, 0, 0, 1, 0, 1])
    # TP 3, TN 2, FP 1, FN 0
    got = compute(["accuracy", "f1", "matthews"], preds, labels)
    assert got["accuracy"] == pytest.approx(5 / 6)
    assert got["f1"] == pytest.approx(2 * 0.75 * 1.0 / 1.75)
    assert got["matthews"] == pytest.approx((3 * 2 - 1 * 0) / math.sqrt(4 * 3 * 3 * 2))
    got = compute(["pearson", "spearman"], np.array([1.0, 2.0, 3.0, 10.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert got["pearson"] == pytest.approx(14 / math.sqrt(50 * 5)) and got["spearman"] == pytest.approx(1.0)


def test_each_task_schedule_comes_from_its_own_step_count():
    paper = Protocol()
    assert finetune.schedule_steps(1000, paper) == (5 * 32, 16)  # ceil(1000 / 32) = 32 steps per epoch
    assert finetune.schedule_steps(100, paper) == (5 * 4, 2)

    def lr_trace(examples: int) -> list[float]:
        model = torch.nn.Linear(2, 2)
        total, warmup = finetune.schedule_steps(examples, paper)
        optimizer, scheduler = finetune.optimizer_and_schedule(model, paper, total, warmup, torch.device("cpu"))
        trace = []
        for _ in range(finetune.schedule_steps(examples, paper)[0]):
            trace.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return trace

    small_alone = lr_trace(100)
    big = lr_trace(1000)
    small_after_big = lr_trace(100)
    assert small_after_big == small_alone
    assert np.argmax(big) == 16 and np.argmax(small_alone) == 2  # warmup ends at each task's own 10 %
    assert max(big) == max(small_alone) == pytest.approx(paper.lr)
    assert big[-1] < 0.01 * paper.lr and small_alone[-1] < 0.05 * paper.lr  # cosine down to ~0 at each task's end


# ----------------------------------------------------------------------------------------------- the command


def test_finetuning_learns_a_learnable_task(pretrained_run, glue_dir, tmp_path):
    run = copy_run(pretrained_run, tmp_path)
    assert run_glue(run, glue_dir, "--tasks", "sst2") == 0  # the shipped smoke protocol as it is
    record = results(run)[("sst2", 1)]
    assert record["status"] == "ok" and record["examples"] == {"train": 320, "validation": 64}
    accuracy = record["metrics"]["validation"]["accuracy"]
    assert accuracy >= 0.8, record["epochs"]  # chance is 0.5
    assert record["epochs"][0]["train_loss"] > record["epochs"][-1]["train_loss"]
    assert len(record["epochs"]) == 5 and record["metrics"] == record["epochs"][-1]["metrics"]
    summary = pd.read_json(run / "glue/summary.json", typ="series")
    assert summary["columns"]["SST-2"]["mean"] == pytest.approx(100 * accuracy)


@pytest.fixture(scope="module")
def two_tasks(pretrained_run, glue_dir, tmp_path_factory):
    """sst2 (96 training examples) and rte (48) fine-tuned in one single-process call."""
    run = copy_run(pretrained_run, tmp_path_factory.mktemp("two-tasks"))
    assert run_glue(run, glue_dir, "--tasks", "rte,sst2", *FAST) == 0
    return run


def test_result_files_have_the_documented_format(two_tasks):
    got = results(two_tasks)
    assert set(got) == {("sst2", 1), ("rte", 1)}
    for r in got.values():
        assert {
            "task",
            "seed",
            "protocol",
            "protocol_hash",
            "status",
            "reason",
            "metrics",
            "epochs",
            "train_time_s",
            "eval_time_s",
            "examples",
        } <= set(r)
        assert r["protocol"] == "smoke" and r["status"] == "ok" and r["reason"] is None
        assert list(r["metrics"]) == ["validation"] and 0 <= r["metrics"]["validation"]["accuracy"] <= 1
        assert [e["epoch"] for e in r["epochs"]] == [1, 2] and all(math.isfinite(e["train_loss"]) for e in r["epochs"])
    summary = pd.read_json(two_tasks / "glue/summary.json", typ="series")
    assert summary["tasks"] == ["sst2", "rte"] and summary["glue_average"] is None


def test_each_task_warms_up_over_its_own_steps_end_to_end(two_tasks, pretrained_run, glue_dir, tmp_path):
    both = results(two_tasks)
    assert (both[("sst2", 1)]["steps"], both[("sst2", 1)]["warmup_steps"]) == (2 * 6, 2)  # 96 / 16 = 6 steps an epoch
    assert (both[("rte", 1)]["steps"], both[("rte", 1)]["warmup_steps"]) == (2 * 3, 1)  # 48 / 16 = 3
    alone = copy_run(pretrained_run, tmp_path)
    assert run_glue(alone, glue_dir, "--tasks", "rte", *FAST) == 0
    rte_alone, rte_after_sst2 = results(alone)[("rte", 1)], both[("rte", 1)]
    for a, b in zip(rte_alone["epochs"], rte_after_sst2["epochs"]):
        assert a["lr"] == b["lr"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)


def test_gpus_2_on_cpu_writes_the_same_results(two_tasks, pretrained_run, glue_dir, tmp_path):
    run = copy_run(pretrained_run, tmp_path)
    assert run_glue(run, glue_dir, "--tasks", "rte,sst2", "--gpus", "2", *FAST) == 0
    multi, single = results(run), results(two_tasks)
    assert set(multi) == set(single)
    assert sorted(p.relative_to(run) for p in run.glob("glue/**/*.json")) == sorted(
        p.relative_to(two_tasks) for p in two_tasks.glob("glue/**/*.json")
    )
    for key in single:
        assert set(multi[key]) == set(single[key])
        assert (
            multi[key]["protocol_hash"] == single[key]["protocol_hash"] and multi[key]["steps"] == single[key]["steps"]
        )
        assert multi[key]["epochs"][-1]["train_loss"] == pytest.approx(
            single[key]["epochs"][-1]["train_loss"], rel=1e-4
        )
    assert sorted(p.name for p in (run / "glue/logs").iterdir()) == ["worker0.log", "worker1.log"]


def test_rerun_skips_done_seeds_and_force_redoes_them(pretrained_run, glue_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    run = copy_run(pretrained_run, runs)
    (run / "summary.json").write_text('{"block": "preln"}')
    args = [
        "glue",
        "--block",
        "preln",
        "--runs-dir",
        str(runs),
        "--data-dir",
        str(glue_dir),
        "--protocol",
        "smoke",
        "--tasks",
        "rte,mrpc",
        *FAST,
    ]
    assert main(args) == 0
    files = {p: p.stat().st_mtime_ns for p in run.glob("glue/*/seed*.json")}
    assert len(files) == 2
    capsys.readouterr()
    assert main(args) == 0
    assert "0 of 2 task/seed runs to do" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in files} == files
    assert main([*args, "--force", "--tasks", "rte"]) == 0
    assert "1 of 1 task/seed runs to do" in capsys.readouterr().out
    rte, mrpc = run / "glue/rte/seed1.json", run / "glue/mrpc/seed1.json"
    assert rte.stat().st_mtime_ns != files[rte] and mrpc.stat().st_mtime_ns == files[mrpc]
    # another protocol is not "done": it reruns, and the earlier result is kept aside
    assert main([*args, "--tasks", "rte", "lr=5e-4"]) == 0
    assert "1 of 1 task/seed runs to do" in capsys.readouterr().out
    assert len(list((run / "glue/rte/previous").glob("seed1-*.json"))) == 1


def test_nan_in_one_task_fails_that_task_and_the_others_complete(pretrained_run, glue_dir, tmp_path, monkeypatch):
    real_load = finetune.load_model

    def load_poisoned(path, num_labels=None, **kw):
        model = real_load(path, num_labels=num_labels, **kw)
        if num_labels == 1:  # STS-B, the regression task, gets a NaN loss from its third step on
            forward, calls = model.forward, []

            def nan_forward(*args, **kwargs):
                logits, loss = forward(*args, **kwargs)
                calls.append(1)
                return logits, (loss * float("nan") if len(calls) >= 3 and loss is not None else loss)

            model.forward = nan_forward
        return model

    monkeypatch.setattr(finetune, "load_model", load_poisoned)
    run = copy_run(pretrained_run, tmp_path)
    assert run_glue(run, glue_dir, "--tasks", "stsb,sst2,cola", *FAST) == 0
    got = results(run)
    assert got[("stsb", 1)]["status"] == "failed" and "epoch 1, step 3" in got[("stsb", 1)]["reason"]
    assert got[("sst2", 1)]["status"] == got[("cola", 1)]["status"] == "ok"
    summary = pd.read_json(run / "glue/summary.json", typ="series")
    assert summary["glue_average"] is None and "stsb seed 1" in summary["average_missing_reason"]
    assert summary["failed"] == [{"task": "stsb", "seed": 1, "reason": got[("stsb", 1)]["reason"]}]


def test_missing_data_fails_before_training(pretrained_run, glue_dir, tmp_path, capsys, monkeypatch):
    run = copy_run(pretrained_run, tmp_path)
    (tmp_path / "empty").mkdir()
    assert run_glue(run, tmp_path / "empty", "--tasks", "rte") == 2
    assert "--data-dir" in capsys.readouterr().err
    partial = tmp_path / "partial"
    (partial / "rte").mkdir(parents=True)
    for f in (glue_dir / "rte").glob("train-*.parquet"):
        (partial / "rte" / f.name).symlink_to(f)
    assert run_glue(run, partial, "--tasks", "rte") == 2
    assert "rte/validation-*.parquet" in capsys.readouterr().err

    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("the hub is unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert main(["glue", str(run), "--protocol", "smoke", "--tasks", "rte"]) == 2
    err = capsys.readouterr().err
    assert "nyu-mll/glue" in err and "--data-dir" in err
    assert not (run / "glue").exists()  # nothing ran


def test_tokenizer_that_does_not_fit_the_model_fails_early(pretrained_run, glue_dir, tmp_path, capsys):
    tokenizer = load_tokenizer(pretrained_run / "model")
    run = tmp_path / "run"
    save_model(MaskedLM(arch_config("tiny", vocab_size=len(tokenizer) - 50), "preln"), run / "model", tokenizer)
    assert run_glue(run, glue_dir, "--tasks", "rte") == 2
    assert "do not match" in capsys.readouterr().err
    assert not (run / "glue").exists()


# ----------------------------------------------------------------------------------------------- bad inputs, early


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


def test_a_damaged_model_is_found_before_any_training(pretrained_run, glue_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pretrained_run / "model", run / "model")
    weights = run / "model/model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:8] + b"{not json at all" + good[24:])  # the header's JSON, damaged
    assert run_glue(run, glue_dir, "--tasks", "rte") == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "damaged safetensors file" in err and "Traceback" not in err
    weights.write_bytes(good[: len(good) - 1000])  # truncated: the header no longer covers the file
    assert run_glue(run, glue_dir, "--tasks", "rte") == 2
    assert str(weights) in capsys.readouterr().err
    weights.write_bytes(good)
    (run / "model/config.json").write_text('{"block": "preln", "arch": {"width": 1')
    assert run_glue(run, glue_dir, "--tasks", "rte") == 2
    assert f"{run / 'model/config.json'}: not valid JSON" in capsys.readouterr().err
    assert not (run / "glue").exists()


def test_a_task_seed_that_another_process_trains_is_refused(pretrained_run, glue_dir, tmp_path, capsys):
    run = copy_run(pretrained_run, tmp_path)
    lock = run / "glue/.locks/rte-seed1.lock"
    holder = hold_lock(lock, "cramming-simple glue")
    try:
        assert run_glue(run, glue_dir, "--tasks", "rte,mrpc", *FAST) == 2
        err = capsys.readouterr().err
        assert f"GLUE rte seed 1 of {run} is in use by PID {holder.pid}" in err and "Traceback" not in err
        assert not list(run.glob("glue/*/seed*.json"))
        assert run_glue(run, glue_dir, "--tasks", "mrpc", *FAST) == 0  # another task of the same run may go on
    finally:
        holder.kill()
        holder.wait()
    assert run_glue(run, glue_dir, "--tasks", "rte", *FAST) == 0  # free once its holder is gone


def test_a_damaged_result_file_is_run_again(pretrained_run, glue_dir, tmp_path, capsys):
    run = copy_run(pretrained_run, tmp_path)
    assert run_glue(run, glue_dir, "--tasks", "rte", *FAST) == 0
    (run / "glue/rte/seed1.json").write_text('{"task": "rte", "se')
    capsys.readouterr()
    assert run_glue(run, glue_dir, "--tasks", "rte", *FAST) == 0
    captured = capsys.readouterr()
    assert "seed1.json: not valid JSON" in captured.err and "1 of 1 task/seed runs to do" in captured.out
    assert results(run)[("rte", 1)]["status"] == "ok"


@pytest.mark.slow  # 20 s of workers at work; --gpus 2 itself: test_gpus_2_on_cpu_writes_the_same_results
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc (Linux)")
def test_glue_workers_die_with_their_parent(pretrained_run, glue_dir, tmp_path):
    run = copy_run(pretrained_run, tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # enough work that the workers cannot simply finish the queue within the 10 s below
    args = [
        "glue",
        str(run),
        "--data-dir",
        str(glue_dir),
        "--protocol",
        "smoke",
        "--tasks",
        "all",
        "--gpus",
        "2",
        "--seeds",
        "1,2,3",
        "epochs=40",
    ]
    parent = subprocess.Popen(
        [sys.executable, "-m", "cramming_simple", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    logs = [run / "glue/logs/worker0.log", run / "glue/logs/worker1.log"]
    deadline = time.monotonic() + 120
    while not all(log.exists() and log.stat().st_size > 0 for log in logs):  # both workers are at work
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    workers = children(parent.pid)
    assert len(workers) >= 2
    parent.kill()
    parent.wait()
    killed_at = time.monotonic()
    while any(alive(p) for p in workers) and time.monotonic() - killed_at < 10:
        time.sleep(0.1)
    assert not [p for p in workers if alive(p)], "GLUE workers outlived their parent"
    done = len(list(run.glob("glue/*/seed*.json")))
    assert done < 3 * 8  # the queue was not simply worked off
    time.sleep(2)
    assert len(list(run.glob("glue/*/seed*.json"))) == done  # nobody is taking pairs any more


def test_per_example_predictions_are_saved_beside_each_result_and_rescore_it(two_tasks):
    from cramming_simple.glue.metrics import compute
    from cramming_simple.glue.runner import predictions_path, read_predictions

    for path in sorted(two_tasks.glob("glue/*/seed*.json")):
        record = pd.read_json(path, typ="series").to_dict()
        assert predictions_path(path).exists() and "predictions" not in record
        saved = read_predictions(path)
        assert set(saved) == set(record["metrics"])
        for split, arrays in saved.items():
            assert list(arrays["index"]) == list(range(len(arrays["label"]))) == list(range(len(arrays["prediction"])))
            assert len(arrays["label"]) == record["examples"][split]
            rescored = compute(list(record["metrics"][split]), arrays["prediction"], arrays["label"])
            assert rescored == pytest.approx(record["metrics"][split])


def test_per_epoch_metrics_go_to_the_tracker(pretrained_run, glue_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is the tested tracker (pip install 'cramming-simple[dev]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = copy_run(pretrained_run, tmp_path)
    assert run_glue(run, glue_dir, "--tasks", "rte", "--seeds", "1", *FAST, "impl.tracker=tensorboard") == 0
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("glue/rte/seed1/validation/accuracy")}
    epochs = results(run)[("rte", 1)]["epochs"]
    assert logged == pytest.approx({e["epoch"]: e["metrics"]["validation"]["accuracy"] for e in epochs}, rel=1e-6)
    assert "glue/rte/seed1/train_loss" in events.Tags()["scalars"]


def _worker_that_dies_on_its_pair(k: int, results) -> None:
    results.put((k, "start", "rte", 1, None))
    os._exit(1)  # as a segfault or an OOM kill would


def _worker_that_finishes_its_pair(k: int, results) -> None:
    results.put((k, "start", "mrpc", 1, None))
    results.put((k, "result", "mrpc", 1, {"task": "mrpc", "seed": 1}))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks two real worker processes")
def test_a_worker_that_dies_costs_its_own_pair_and_the_others_go_on(tmp_path):
    import multiprocessing as mp

    from cramming_simple.glue.runner import collect

    ctx = mp.get_context("fork")
    results = ctx.Queue()
    targets = (_worker_that_dies_on_its_pair, _worker_that_finishes_its_pair)
    processes = [ctx.Process(target=target, args=(k, results)) for k, target in enumerate(targets)]
    for process in processes:
        process.start()
    done = []
    errors = collect([("rte", 1), ("mrpc", 1)], processes, results, done.append, tmp_path)
    for process in processes:
        process.join()
    assert done == [{"task": "mrpc", "seed": 1}]
    assert errors == [f"rte seed 1: not run, its worker died (see {tmp_path})"]
