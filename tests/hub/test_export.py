"""cramming_simple/hub/export.py: `export` writes a transformers folder with a model card, of the pretrained or a fine-
tuned model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.commands import cli
from helpers.glue_data import make_glue, sentiment_words, write_parquet
from helpers.hub import python

from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.folders import load_model
from cramming_simple.folders.remote import MODELING_FILE
from cramming_simple.model import SequenceClassifier
from cramming_simple.runs import MODEL


@pytest.fixture(scope="module")
def fine_tuned(block_runs, tmp_path_factory) -> Path:
    """A copy of the Pre-LN run (model and summary) fine-tuned on RTE (two seeds) and STS-B, models kept."""
    run = tmp_path_factory.mktemp("ft") / "tiny-preln"
    shutil.copytree(block_runs["preln"] / MODEL, run / MODEL)
    for name in ("summary.json", "config.yaml"):
        shutil.copy(block_runs["preln"] / name, run / name)
    words = sentiment_words(load_tokenizer(run / MODEL))
    data = write_parquet(make_glue({"default": 48}, n_eval=24, words=words), run.parent / "glue-data")
    code, out, err = cli(
        "glue", str(run), "--data-dir", str(data), "--protocol", "smoke", "--tasks", "rte,stsb", "--seeds", "1,2",
        "epochs=1", "precision=fp32", "--save-models",
    )  # fmt: skip
    assert code == 0, err
    return run


def test_glue_keeps_fine_tuned_models_that_load_as_their_classifier(fine_tuned):
    for task, labels in (("rte", 2), ("stsb", 1)):
        for seed in (1, 2):
            folder = fine_tuned / "glue" / task / f"seed{seed}.model"
            config = json.loads((folder / "config.json").read_text())
            assert config["architectures"] == ["CrammingSimpleForSequenceClassification"]
            assert config["num_labels"] == labels and config["task"] == task
            model = load_model(folder)
            assert isinstance(model, SequenceClassifier) and model.num_labels == labels
    rte = json.loads((fine_tuned / "glue" / "rte" / "seed1.model" / "config.json").read_text())
    assert rte["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert json.loads((fine_tuned / "glue" / "stsb" / "seed1.model" / "config.json").read_text())["problem_type"] == (
        "regression"
    )
    # a pair that has its result but not its model runs again when models are kept
    shutil.rmtree(fine_tuned / "glue" / "rte" / "seed2.model")
    from cramming_simple.glue.runner import Job

    job_result = json.loads((fine_tuned / "glue" / "rte" / "seed1.json").read_text())
    hashes = {"protocol_hash": job_result["protocol_hash"], "model_hash": job_result["model_hash"]}
    job = Job(fine_tuned, "smoke", None, [], None, save_models=True, **hashes)
    assert job.is_done("rte", 1) and not job.is_done("rte", 2)


def test_a_glue_export_predicts_as_the_harness_did(fine_tuned, tmp_path):
    """export --glue: the folder's predictions on the validation rows, loaded without cramming-simple, equal the
    predictions the harness stored for the same seed (glue/<task>/seed<k>.predictions.npz): RTE (labels) and
    STS-B (regression)."""
    for task in ("rte", "stsb"):
        code, out, err = cli("export", str(fine_tuned), "--glue", task, "--seed", "1", "--out", str(tmp_path / task))
        assert code == 0, err
        rows = pd.read_parquet(next((fine_tuned.parent / "glue-data" / task).glob("validation-*.parquet")))
        (tmp_path / f"{task}.json").write_text(json.dumps([rows["sentence1"].tolist(), rows["sentence2"].tolist()]))
    got = python(
        """
        import json, torch
        from transformers import AutoTokenizer, AutoModelForSequenceClassification, pipeline
        report = {}
        for task in ("rte", "stsb"):
            tokenizer = AutoTokenizer.from_pretrained(task, trust_remote_code=True)
            model = AutoModelForSequenceClassification.from_pretrained(task, trust_remote_code=True).eval()
            first, second = json.load(open(f"{task}.json"))
            enc = tokenizer(first, second, truncation=True, max_length=128, padding=True, return_tensors="pt")
            with torch.no_grad():
                logits = model(**enc).logits
            preds = logits[:, 0] if model.config.num_labels == 1 else logits.argmax(-1)
            labels = pipeline("text-classification", model=model, tokenizer=tokenizer)(first[:2])
            report[task] = {"preds": preds.tolist(), "labels": [l["label"] for l in labels]}
        print(json.dumps(report))
        """,
        tmp_path,
    )
    for task in ("rte", "stsb"):
        stored = np.load(fine_tuned / "glue" / task / "seed1.predictions.npz")
        index, harness = stored["validation.index"], stored["validation.prediction"]
        preds = np.asarray(got[task]["preds"])
        assert len(index) == len(preds) == 24
        if task == "stsb":
            np.testing.assert_allclose(preds[index], harness, atol=1e-4)
        else:
            assert (preds[index] == harness).all()
            assert set(got[task]["labels"]) <= {"entailment", "not_entailment"}
        card = (tmp_path / task / "README.md").read_text()
        assert "pipeline_tag: text-classification" in card and "Seed 1" in card and "(this model)" in card


def test_export_picks_the_best_seed_when_none_is_given(fine_tuned, tmp_path):
    results = {s: json.loads((fine_tuned / "glue" / "stsb" / f"seed{s}.json").read_text()) for s in (1, 2)}
    best = max(results, key=lambda s: results[s]["metrics"]["validation"]["pearson"])
    code, out, err = cli("export", str(fine_tuned), "--glue", "stsb", "--out", str(tmp_path / "e"))
    assert code == 0, err
    assert f"Seed {best} of the seeds below" in (tmp_path / "e" / "README.md").read_text()


def test_export_writes_a_folder_with_a_model_card(block_runs, tmp_path):
    run = block_runs["sas"]
    code, out, err = cli("export", str(run), "--out", str(tmp_path / "sas"))
    assert code == 0, err
    folder = tmp_path / "sas"
    assert {"config.json", "model.safetensors", MODELING_FILE, "README.md", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    summary = json.loads((run / "summary.json").read_text())
    card = (folder / "README.md").read_text()
    for fact in (
        "pipeline_tag: fill-mask",
        "SAS (`sas`)",
        f"{summary['params']:,}",
        "smoke: ",
        f"{summary['microbatch_steps']:,} of",
        f"{summary['final_loss']:.3f}",
        f"{summary['eval_loss']:.3f}",
        "cpu",
        "@inproceedings{he2024simplifying",
        "@inproceedings{geiping2023cramming",
    ):
        assert fact in card, fact
    # the command rebuilt from config.yaml makes the same config
    command = next(line for line in card.splitlines() if line.startswith("cramming-simple pretrain"))
    assert "--block sas --budget smoke" in command and f"hours={3.0 / 3600}" in command and "impl.device=cpu" in command
    assert "## GLUE" not in card  # no results, no table

    # export again into the same folder: replaced; into a folder holding something else: refused
    assert cli("export", str(run), "--out", str(folder))[0] == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = cli("export", str(run), "--out", str(tmp_path / "other"))
    assert code == 2 and "not a model folder" in err and (tmp_path / "other" / "notes.txt").exists()


def test_the_card_has_the_glue_table_of_the_run(fine_tuned, tmp_path):
    assert cli("export", str(fine_tuned), "--out", str(tmp_path / "e"))[0] == 0
    card = (tmp_path / "e" / "README.md").read_text()
    summary = json.loads((fine_tuned / "glue" / "summary.json").read_text())
    assert "## GLUE (this pretrained model)" in card and "| STS-B | RTE | GLUE |" in card
    rte = summary["columns"]["RTE"]
    assert f"{rte['mean']:.1f} ± {rte['std']:.1f}" in card


def test_export_of_a_missing_fine_tuned_model_says_how_to_make_one(block_runs, tmp_path):
    code, _, err = cli("export", str(block_runs["sasp"]), "--glue", "rte", "--out", str(tmp_path / "e"))
    assert code == 2 and "--save-models" in err and len(err.strip().splitlines()) == 1
