"""Saved models in the Hugging Face world: transformers loads them without cramming-simple (generated remote code),
with it (registered classes), through the pipelines; `export` writes a folder with a model card and pushes it.

The loading side runs in subprocesses in which `import cramming_simple` fails, as on a machine without it."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import smoke_config
from helpers.commands import cli
from helpers.glue_data import make_glue, sentiment_words, write_parquet
from safetensors.torch import load_file, save_file

from cramming_simple.data.tokenizer import load_tokenizer
from cramming_simple.folders import load_model, save_model
from cramming_simple.folders.remote import MODELING_FILE, RemoteCodeUnavailable, modeling_source
from cramming_simple.model import BLOCKS, MaskedLM, SequenceClassifier, arch_config
from cramming_simple.runs import MODEL

ROOT = Path(__file__).resolve().parents[1]
WITHOUT_HARNESS = 'import sys\nsys.modules["cramming_simple"] = None  # as on a machine without cramming-simple\n'


def python(script: str, tmp_path: Path, *args: str, harness: bool = False) -> dict:
    """Run a script in a fresh interpreter (HF module cache under tmp_path); its last stdout line is JSON."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    if not harness:  # the checkout must not be importable either (an installed copy is hidden by the line above)
        env.pop("PYTHONPATH", None)
    code = (WITHOUT_HARNESS if not harness else "") + textwrap.dedent(script)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(pretrained_run, smoke_cache, tmp_path_factory) -> dict[str, Path]:
    """Smoke-pretrained runs of Pre-LN (the session's), SAS and SAS-P (a few seconds each)."""
    from cramming_simple.train.loop import pretrain

    root = tmp_path_factory.mktemp("hf-runs")
    for block in ("sas", "sasp"):
        pretrain(smoke_config(smoke_cache, block, 3.0, "impl.log_seconds=2", name=f"{block}-smoke"), root)
    return {"preln": pretrained_run, "sas": root / "sas-smoke", "sasp": root / "sasp-smoke"}


def batch(tokenizer) -> dict[str, torch.Tensor]:
    texts = ["the film was good and the music was great", f"a dull {tokenizer.mask_token} story"]
    return dict(tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False))


def test_saved_models_load_with_transformers_where_cramming_simple_is_missing(runs, tmp_path):
    """AutoConfig / AutoModel / AutoModelForMaskedLM with trust_remote_code on run/model as pretraining saved it:
    logits equal to the harness's MaskedLM.logits (atol 1e-5), hidden states equal, the loss of `labels`; and
    the fill-mask pipeline."""
    expected = {}
    for block, run in runs.items():
        folder = run / MODEL
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "cramming-simple-bert" and "AutoModelForMaskedLM" in config["auto_map"]
        assert (folder / MODELING_FILE).is_file()
        # a class name transformers 4 knows as well (5 calls its fast tokenizers TokenizersBackend)
        assert (
            json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
        )
        model = load_model(folder).eval()
        inputs = batch(load_tokenizer(folder))
        with torch.no_grad():
            logits = model.logits(inputs["input_ids"], inputs["attention_mask"])
            hidden = model.encoder(inputs["input_ids"], inputs["attention_mask"])
        labels = torch.full_like(inputs["input_ids"], -100)
        labels[:, 1] = inputs["input_ids"][:, 1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        torch.save({**inputs, "labels": labels, "logits": logits, "hidden": hidden}, tmp_path / f"{block}.pt")
        expected[block] = float(loss)

    out = python(
        """
        import json, torch
        from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, pipeline
        try:
            import cramming_simple
            raise SystemExit("cramming_simple is importable")
        except ImportError:
            pass
        report = {}
        for block, folder in zip(sys.argv[1::2], sys.argv[2::2]):
            ref = torch.load(f"{block}.pt")
            config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
            mlm = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
            base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
            with torch.no_grad():
                out = mlm(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], labels=ref["labels"])
                hidden = base(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).last_hidden_state
            report[block] = {
                "config": [type(config).__name__, config.block, config.hidden_size, config.num_hidden_layers],
                "classes": [type(mlm).__module__.split(".")[0], type(base).__name__],
                "logits": (out.logits - ref["logits"]).abs().max().item(),
                "hidden": (hidden - ref["hidden"]).abs().max().item(),
                "loss": out.loss.item(),
            }
        fill = pipeline("fill-mask", model=sys.argv[2], trust_remote_code=True)
        report["fill"] = fill(f"the film was {fill.tokenizer.mask_token} .")
        print(json.dumps(report))
        """,
        tmp_path,
        *[str(x) for block, run in runs.items() for x in (block, run / MODEL)],
    )
    for block in runs:
        got = out[block]
        assert got["config"] == ["CrammingSimpleConfig", block, 128, 2]
        assert got["classes"] == ["transformers_modules", "CrammingSimpleModel"]  # the folder's code, not ours
        assert got["logits"] <= 1e-5 and got["hidden"] <= 1e-5, got
        assert got["loss"] == pytest.approx(expected[block], abs=1e-5)
    assert len(out["fill"]) == 5 and all(p["token_str"] and 0 < p["score"] <= 1 for p in out["fill"])


def test_importing_cramming_simple_registers_the_classes_and_their_saves_load_in_the_harness(runs, tmp_path):
    out = python(
        """
        import json, sys
        import cramming_simple
        import torch
        early = "transformers" in sys.modules  # the registration waits for transformers to be imported
        from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification
        mlm = AutoModelForMaskedLM.from_pretrained(sys.argv[1])  # no trust_remote_code: the registered classes
        clf = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=1)
        ids = torch.tensor([[2, 5, 9, 3]])
        clf.save_pretrained("hf-saved")  # as transformers' Trainer saves: a folder the harness and others load
        print(json.dumps({"early": early, "mlm": type(mlm).__module__, "clf": [type(clf).__name__,
              clf.config.problem_type, clf.eval()(input_ids=ids).logits.tolist()]}))
        """,
        tmp_path,
        str(runs["sas"] / MODEL),
        harness=True,
    )
    logits = out["clf"].pop()
    assert out == {
        "early": False,
        "mlm": "cramming_simple.model.hf",
        "clf": ["CrammingSimpleForSequenceClassification", "regression"],
    }
    saved = tmp_path / "hf-saved"
    assert (saved / MODELING_FILE).is_file() and "auto_map" in json.loads((saved / "config.json").read_text())
    model = load_model(saved).eval()
    assert isinstance(model, SequenceClassifier) and model.num_labels == 1
    assert model(torch.tensor([[2, 5, 9, 3]]))[0].flatten().tolist() == pytest.approx(logits[0], abs=1e-6)


def test_the_command_line_and_its_workers_skip_the_registration_and_its_imports(tmp_path):
    """A command reads tokenizers through transformers but never loads a folder with the Auto classes: its
    process does not pay for transformers' model classes (1.2 s), nor do the processes it starts."""
    script = """
        import json, os, subprocess, sys
        from cramming_simple.cli import main
        sys.argv = ["cramming-simple", "params", "--arch", "tiny", "--json"]
        main()  # as the console command calls it
        from transformers import AutoTokenizer  # what pretrain and glue import
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        child = "import cramming_simple, transformers, sys; print('transformers.modeling_utils' in sys.modules)"
        print(json.dumps({"heavy": "transformers.modeling_utils" in sys.modules,
              "registered": "cramming-simple-bert" in CONFIG_MAPPING,
              "child": subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.strip()}))
        """
    assert python(script, tmp_path, harness=True) == {"heavy": False, "registered": False, "child": "False"}
    library = "import json, sys\nimport cramming_simple\nfrom transformers import AutoTokenizer\n"
    library += "print(json.dumps('transformers.modeling_utils' in sys.modules))"
    assert python(library, tmp_path, harness=True) is True  # the same import without the command: registered


def test_from_config_keeps_the_blocks_init_and_the_bert_names_read_and_write_arch():
    from cramming_simple.model.hf import CrammingSimpleConfig, CrammingSimpleForMaskedLM

    torch.manual_seed(0)
    config = CrammingSimpleConfig(
        block="sasp", arch={"preset": "tiny", "vocab_size": 512, "depth": 2, "width": 64, "heads": 2, "glu_width": 128}
    )
    model = CrammingSimpleForMaskedLM(config)
    d = 64
    assert model.encoder.layers[0].w_in.weight[:d].abs().max() == 0  # SAS-P's zero query init survives post_init
    assert model.encoder.embedding.sinusoid[0, 1] == 1.0
    assert (config.hidden_size, config.num_hidden_layers, config.max_position_embeddings) == (64, 2, 128)
    model.resize_token_embeddings(520)  # writes config.vocab_size: kept in arch, and the tied decoder follows
    assert config.vocab_size == config.arch["vocab_size"] == 520
    assert model(input_ids=torch.tensor([[2, 515, 3]])).logits.shape == (1, 3, 520)


@pytest.mark.parametrize("block", list(BLOCKS))
def test_the_generated_file_computes_what_the_package_computes_for_every_block(block, monkeypatch):
    """The generated text, executed as its own module, gives the harness's logits for all seven blocks (the
    subprocess test above covers three of them end to end)."""
    torch.manual_seed(0)
    model = MaskedLM(arch_config("tiny", vocab_size=512), block).eval()
    generated = types.ModuleType("generated_modeling")
    monkeypatch.setitem(sys.modules, generated.__name__, generated)
    exec(compile(modeling_source(model.encoder.spec, "test"), MODELING_FILE, "exec"), generated.__dict__)
    config = generated.CrammingSimpleConfig(block=block, arch=dataclasses.asdict(model.encoder.cfg))
    hf = generated.CrammingSimpleForMaskedLM(config).eval()
    hf.load_state_dict(model.state_dict())
    ids, mask = torch.tensor([[2, 40, 41, 42, 3], [2, 50, 3, 0, 0]]), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    assert type(hf.encoder).__module__ == "generated_modeling"
    assert torch.equal(hf(input_ids=ids, attention_mask=mask).logits, model.logits(ids, mask))


# ------------------------------------------------------------------------------------------------- GLUE export


@pytest.fixture(scope="module")
def fine_tuned(runs, tmp_path_factory) -> Path:
    """A copy of the Pre-LN run (model and summary) fine-tuned on RTE (two seeds) and STS-B, models kept."""
    run = tmp_path_factory.mktemp("ft") / "tiny-preln"
    shutil.copytree(runs["preln"] / MODEL, run / MODEL)
    for name in ("summary.json", "config.yaml"):
        shutil.copy(runs["preln"] / name, run / name)
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


# ------------------------------------------------------------------------------------------ export and card


def test_export_writes_a_folder_with_a_model_card(runs, tmp_path):
    run = runs["sas"]
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


def test_export_of_a_missing_fine_tuned_model_says_how_to_make_one(runs, tmp_path):
    code, _, err = cli("export", str(runs["sasp"]), "--glue", "rte", "--out", str(tmp_path / "e"))
    assert code == 2 and "--save-models" in err and len(err.strip().splitlines()) == 1


def test_push_to_an_unreachable_hub_fails_in_seconds_with_one_line(runs, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_test"}  # port 9: nothing listens
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cramming_simple", "export", str(runs["sas"]), "--out", str(tmp_path / "e"),
         "--push-to-hub", "someone/crammed-sas"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 2 and elapsed < 10, (elapsed, proc.stderr)
    assert proc.stderr.strip().count("\n") == 0 and "cannot reach the Hugging Face hub at http://127.0.0.1:9" in (
        proc.stderr
    )
    assert not (tmp_path / "e").exists()  # checked before any work


def test_reachable_gives_up_at_its_deadline(monkeypatch):
    """A hub that never answers (a name lookup or connection that hangs) is given up at the deadline."""
    from cramming_simple.hub import push

    released = threading.Event()

    def hang(*args, **kwargs):  # until the test is over, then fails as a refused connection would
        released.wait(30)
        raise OSError("released")

    monkeypatch.setattr(push.urllib.request, "urlopen", hang)
    started = time.monotonic()
    assert push.reachable("https://hub.invalid", timeout=1.0) == "no answer within 1 s"
    assert time.monotonic() - started < 3
    released.set()


# ---------------------------------------------------------------------------------------- old folders, user blocks


def test_an_old_run_folder_still_loads_and_exports_as_a_transformers_folder(runs, tmp_path):
    """A folder saved before the Hugging Face keys (weights without 'encoder.', no model_type, no modeling file)."""
    old = tmp_path / "old" / MODEL
    shutil.copytree(runs["preln"] / MODEL, old)
    state = {k.removeprefix("encoder."): v for k, v in load_file(str(old / "model.safetensors")).items()}
    save_file(state, str(old / "model.safetensors"))
    config = json.loads((old / "config.json").read_text())
    legacy = {k: config[k] for k in ("format", "block", "block_title", "block_source", "arch")}
    (old / "config.json").write_text(json.dumps(legacy))
    (old / MODELING_FILE).unlink()
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    new = load_model(runs["preln"] / MODEL).eval()
    assert torch.equal(load_model(old).eval().logits(ids), new.logits(ids))
    shutil.copy(runs["preln"] / "summary.json", old.parent / "summary.json")
    shutil.copy(runs["preln"] / "config.yaml", old.parent / "config.yaml")
    assert cli("export", str(old.parent), "--out", str(tmp_path / "e"))[0] == 0
    torch.save({"ids": ids, "logits": new.logits(ids)}, tmp_path / "ref.pt")
    got = python(
        """
        import json, torch
        from transformers import AutoModelForMaskedLM
        ref = torch.load("ref.pt")
        model = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        print(json.dumps((model(input_ids=ref["ids"]).logits - ref["logits"]).abs().max().item()))
        """,
        tmp_path,
        str(tmp_path / "e"),
    )
    assert got <= 1e-5


def test_a_user_block_travels_when_it_imports_only_the_model_package(tmp_path):
    """examples/blocks/rezero.py imports cramming_simple.model names: they resolve inside the generated file."""
    torch.manual_seed(0)
    model = MaskedLM(arch_config("tiny", vocab_size=512), f"{ROOT}/examples/blocks/rezero.py:ReZero").eval()
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.beta_sa.fill_(0.5)
            layer.beta_ff.fill_(0.3)
    save_model(model, tmp_path / "m")
    ids = torch.tensor([[2, 40, 41, 42, 3]])
    torch.save({"ids": ids, "logits": model.logits(ids)}, tmp_path / "ref.pt")
    got = python(
        """
        import json, torch
        from transformers import AutoModelForMaskedLM
        ref = torch.load("ref.pt")
        model = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
        print(json.dumps([type(model.encoder.layers[0]).__name__,
                          (model(input_ids=ref["ids"]).logits - ref["logits"]).abs().max().item()]))
        """,
        tmp_path,
        str(tmp_path / "m"),
    )
    assert got[0] == "ReZero" and got[1] <= 1e-5


BLOCK_NEEDING_THE_HARNESS = """
import torch
from torch import nn
from cramming_simple.model.layers import GLU
from cramming_simple.runtime import seed_everything  # not model code: cannot travel


class NeedsHarness(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.mlp = GLU(cfg)

    def forward(self, x, mask):
        return x + self.mlp(x)
"""


def test_a_user_block_that_needs_more_of_the_harness_is_saved_without_remote_code(tmp_path, caplog):
    path = tmp_path / "needs.py"
    path.write_text(BLOCK_NEEDING_THE_HARNESS)
    model = MaskedLM(arch_config("tiny", vocab_size=512), f"{path}:NeedsHarness")
    with pytest.raises(RemoteCodeUnavailable, match="line 5 imports cramming_simple.runtime"):
        modeling_source(model.encoder.spec, "test")
    save_model(model, tmp_path / "m")  # never lost: saved, with a warning, without auto_map
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "auto_map" not in config and not (tmp_path / "m" / MODELING_FILE).exists()
    assert "cramming_simple.runtime" in caplog.text
    assert isinstance(load_model(tmp_path / "m"), MaskedLM)

    run = tmp_path / "run"
    (run / MODEL).parent.mkdir()
    shutil.copytree(tmp_path / "m", run / MODEL)
    code, _, err = cli("export", str(run), "--out", str(tmp_path / "e"))
    assert code == 2 and "cannot carry" in err and len(err.strip().splitlines()) == 1


def test_a_classifier_saved_by_the_harness_round_trips():
    model = SequenceClassifier(arch_config("tiny", vocab_size=512), "sas", num_labels=3, head_width=96).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp) / "m", extra={"task": "mnli"})
        from cramming_simple.folders import check_model

        check_model(Path(tmp) / "m")
        loaded = load_model(Path(tmp) / "m").eval()
    ids = torch.tensor([[2, 40, 41, 3]])
    assert loaded.classifier.dense.out_features == 96 and torch.equal(loaded(ids)[0], model(ids)[0])
