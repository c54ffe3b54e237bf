"""GLUE data the tests write: every task in the hub's schema, as parquet or as the original TSV files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd

from cramming_simple.cli import main
from cramming_simple.glue.tasks import TASKS

HUB_COLUMNS = {  # the hub's (nyu-mll/glue) text columns
    "cola": ["sentence"],
    "sst2": ["sentence"],
    "mrpc": ["sentence1", "sentence2"],
    "stsb": ["sentence1", "sentence2"],
    "qqp": ["question1", "question2"],
    "mnli": ["premise", "hypothesis"],
    "qnli": ["question", "sentence"],
    "rte": ["sentence1", "sentence2"],
}


NLI = ["entailment", "neutral", "contradiction"]  # the hub's label ids 0, 1, 2


QNLI_RTE = ["entailment", "not_entailment"]


def sentiment_words(tokenizer) -> tuple[list[str], list[str], list[str]]:
    """(positive, negative, filler) words that the tokenizer keeps whole, so any tokenizer can learn the task."""
    vocab = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and len(w) >= 3)
    return vocab[:4], vocab[4:8], vocab[8:40]


def make_glue(
    n_train: dict[str, int], n_eval: int, words: tuple[list[str], list[str], list[str]], seed: int = 0
) -> dict[str, dict[str, pd.DataFrame]]:
    """Every GLUE task as hub-schema frames. SST-2's label is whether its one sentiment word is positive (learnable);
    the other tasks have random labels. QQP and MNLI texts carry stray double quotes, as the real files do."""
    rng = random.Random(seed)
    positive, negative, filler = words

    def text(k=6):
        return " ".join(rng.choices(filler, k=k))

    def task_frame(task: str, n: int) -> pd.DataFrame:
        rows = []
        for i in range(n):
            if task == "sst2":
                label = rng.randint(0, 1)
                mood = rng.choice(positive if label else negative)
                words_ = text(5).split()
                words_.insert(rng.randint(0, 5), mood)
                row = {"sentence": " ".join(words_), "label": label}
            elif task == "stsb":
                row = {"sentence1": text(), "sentence2": text(), "label": round(rng.uniform(0, 5), 2)}
            else:
                cols = HUB_COLUMNS[task]
                row = {c: text() for c in cols}
                row["label"] = rng.randint(0, 2 if task == "mnli" else 1)
                if task in ("qqp", "mnli") and i % 3 == 0:
                    row[cols[0]] = '"' + row[cols[0]]  # an opening quote with no closing one
                    row[cols[1]] = row[cols[1]] + ' 12" long'
            rows.append({**row, "idx": i})
        frame = pd.DataFrame(rows)
        frame["label"] = frame["label"].astype("float32" if task == "stsb" else "int64")
        return frame

    out = {}
    for task in TASKS:
        splits = ["validation_matched", "validation_mismatched"] if task == "mnli" else ["validation"]
        out[task] = {
            "train": task_frame(task, n_train.get(task, n_train["default"])),
            **{s: task_frame(task, n_eval) for s in splits},
        }
    return out


def write_parquet(glue: dict, root: Path) -> Path:
    """The hub's layout: <config>/<split>-0000k-of-0000n.parquet (train in two shards, to test their order)."""
    for task, splits in glue.items():
        (root / task).mkdir(parents=True)
        for split, frame in splits.items():
            shards = np.array_split(np.arange(len(frame)), 2 if split == "train" else 1)
            for k, rows in enumerate(shards):
                frame.iloc[rows].to_parquet(root / task / f"{split}-{k:05d}-of-{len(shards):05d}.parquet", index=False)
    return root


def write_tsv(glue: dict, root: Path) -> Path:
    """The original GLUE distribution, independent of glue/tasks.yaml: its own folders, columns and quirks."""

    def write(path: Path, header: list[str] | None, rows: list[list]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ([header] if header else []) + rows
        path.write_text(
            "".join("\t".join(map(str, line)) + "\n" for line in lines), encoding="utf-8"
        )  # raw: no quoting at all

    files = {
        "train": "train.tsv",
        "validation": "dev.tsv",
        "validation_matched": "dev_matched.tsv",
        "validation_mismatched": "dev_mismatched.tsv",
    }
    for task, splits in glue.items():
        for split, f in splits.items():
            r = list(f.itertuples(index=False))
            name = files[split]
            if task == "cola":  # no header: source, label, original judgement, sentence
                write(root / "CoLA" / name, None, [["gj04", x.label, "" if x.label else "*", x.sentence] for x in r])
            elif task == "sst2":
                write(root / "SST-2" / name, ["sentence", "label"], [[x.sentence, x.label] for x in r])
            elif task == "mrpc":
                write(
                    root / "MRPC" / name,
                    ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                    [[x.label, 2 * x.idx, 2 * x.idx + 1, x.sentence1, x.sentence2] for x in r],
                )
            elif task == "stsb":
                head = [
                    "index",
                    "genre",
                    "filename",
                    "year",
                    "old_index",
                    "source1",
                    "source2",
                    "sentence1",
                    "sentence2",
                    "score",
                ]
                write(
                    root / "STS-B" / name,
                    head,
                    [
                        [
                            x.idx,
                            "main-news",
                            "f",
                            "2012",
                            x.idx,
                            "none",
                            "none",
                            x.sentence1,
                            x.sentence2,
                            f"{x.label:.3f}",
                        ]
                        for x in r
                    ],
                )
            elif task == "qqp":
                write(
                    root / "QQP" / name,
                    ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                    [[x.idx, 1, 2, x.question1, x.question2, x.label] for x in r],
                )
            elif task == "mnli":  # train has one annotator label column, dev five, then gold_label
                labels = ["label1"] if split == "train" else [f"label{k}" for k in range(1, 6)]
                head = [
                    "index",
                    "promptID",
                    "pairID",
                    "genre",
                    "sentence1_binary_parse",
                    "sentence2_binary_parse",
                    "sentence1_parse",
                    "sentence2_parse",
                    "sentence1",
                    "sentence2",
                    *labels,
                    "gold_label",
                ]
                write(
                    root / "MNLI" / name,
                    head,
                    [
                        [
                            x.idx,
                            1,
                            "1e",
                            "fiction",
                            "( a )",
                            "( b )",
                            "(ROOT a)",
                            "(ROOT b)",
                            x.premise,
                            x.hypothesis,
                            *[NLI[x.label]] * len(labels),
                            NLI[x.label],
                        ]
                        for x in r
                    ],
                )
            else:  # qnli, rte: labels as words
                cols = HUB_COLUMNS[task]
                write(
                    root / task.upper() / name,
                    ["index", *cols, "label"],
                    [[x.idx, getattr(x, cols[0]), getattr(x, cols[1]), QNLI_RTE[x.label]] for x in r],
                )
    return root


def copy_run(pretrained_run: Path, tmp_path: Path) -> Path:
    """A fresh run folder sharing the pretrained model (results go to run/glue)."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "model").symlink_to(pretrained_run / "model")
    return run


# the smoke protocol made faster: sst2 96 examples -> 12 steps; the other tasks (48 examples) -> 6 steps
FAST = ["epochs=2", "max_train_examples=96"]  # sst2: 96 examples -> 12 steps; the other tasks: 48 -> 6 steps


def run_glue(run: Path, glue_dir: Path, *extra: str) -> int:
    return main(["glue", str(run), "--data-dir", str(glue_dir), "--protocol", "smoke", *extra])


def results(run: Path) -> dict[tuple[str, int], dict]:
    return {
        (r["task"], r["seed"]): r
        for r in (pd.read_json(p, typ="series").to_dict() for p in sorted(run.glob("glue/*/seed*.json")))
    }
