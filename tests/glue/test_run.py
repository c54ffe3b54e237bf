"""cramming_simple/glue/run.py: the GLUE stage: result files, reruns, failures in one task, damaged models and
results."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from helpers.glue_data import (
    FAST,
    copy_run,
    results,
    run_glue,
)
from helpers.runs import summary

from cramming_simple.cli import main
from cramming_simple.config import ConfigError
from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.folders import save_model
from cramming_simple.glue import finetune
from cramming_simple.glue.metrics import compute
from cramming_simple.model import MaskedLM, arch_config
from cramming_simple.runs import GLUE, glue_predictions, glue_result

pytestmark = pytest.mark.usefixtures("one_thread")


def test_glue_runs_from_python_through_its_typed_config(pretrained_run, glue_dir, tmp_path):
    from cramming_simple.glue.run import GlueRun, run

    folder = copy_run(pretrained_run, tmp_path)
    config = GlueRun.from_options(
        folder, protocol="smoke", overrides=[*FAST, "impl.tracker=none"], tasks="rte", seeds="3", data_dir=str(glue_dir)
    )
    assert config.trackers == [] and config.overrides == tuple(FAST) and config.protocol.seeds == [3]
    assert config.tasks == ["rte"] and config.model_dir == folder / "model" and config.glue_name == GLUE
    assert run(config) == 0
    record = json.loads(glue_result(folder / GLUE, "rte", 3).read_text())
    assert record["status"] == "ok" and record["invocation"]["overrides"] == FAST
    assert glue_predictions(glue_result(folder / GLUE, "rte", 3)).exists()
    with pytest.raises(ConfigError, match="impl.tracker"):
        GlueRun.from_options(folder, protocol="smoke", overrides=["impl.threads=2"])
    with pytest.raises(ConfigError, match="lrr"):
        GlueRun.from_options(folder, protocol="smoke", overrides=["lrr=1e-4"])
    with pytest.raises(TypeError):  # options by name only: no positional bools
        GlueRun.from_options(folder, "smoke")


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


def test_a_damaged_result_file_is_run_again(pretrained_run, glue_dir, tmp_path, capsys):
    run = copy_run(pretrained_run, tmp_path)
    assert run_glue(run, glue_dir, "--tasks", "rte", *FAST) == 0
    (run / "glue/rte/seed1.json").write_text('{"task": "rte", "se')
    capsys.readouterr()
    assert run_glue(run, glue_dir, "--tasks", "rte", *FAST) == 0
    captured = capsys.readouterr()
    assert "seed1.json: not valid JSON" in captured.err and "1 of 1 task/seed runs to do" in captured.out
    assert results(run)[("rte", 1)]["status"] == "ok"


def test_per_example_predictions_are_saved_beside_each_result_and_rescore_it(two_tasks):
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


def test_glue_refuses_a_model_folder_whose_tokenizer_is_not_the_pretrained_one(pretrained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    assert len(summary(run)["data"]["tokenizer_sha256"]) == 64
    tokenizer = json.loads((run / "model" / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = (next(t for t, i in vocab.items() if i == k) for k in (200, 201))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (run / "model" / "tokenizer.json").write_text(json.dumps(tokenizer))
    done = subprocess.run(
        [sys.executable, "-m", "cramming_simple", "glue", str(run), "--protocol", "smoke", "--tasks", "rte",
         "--data-dir", str(tmp_path / "nowhere")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "not the one" in done.stderr and len(done.stderr.strip().splitlines()) == 1
